"""The one error tree of the runtime.

    EdgeError
    ├── ConfigError            a config file or value is wrong; carries every problem found
    ├── RuntimeFailure         the actor graph cannot run
    │   ├── StartupError       an actor did not start or answer its ping
    │   └── CrashLoopError     an actor crashed more often than its restart intensity allows
    ├── ActorUnavailableError  a message could not be handed to an actor (stopped/restarting)
    └── ServiceError           an external service (broker, Kafka, database) failed us

Adapters turn library errors into these with ``raise ... from exc`` so callers handle one
tree. Codec errors live beside the codecs (``edge.codecs``) because that package must not
import the runtime; they derive from ``EdgeError`` too once it exists there.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeError(Exception):
    """Root of every error the runtime raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a config: where (dotted path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(EdgeError):
    """A config is invalid. ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[ConfigProblem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} config problem(s){where}:\n{lines}")


class RuntimeFailure(EdgeError):
    """The actor graph cannot run; the process should exit non-zero."""


class StartupError(RuntimeFailure):
    """An actor failed to start or to answer its start-up ping."""


class CrashLoopError(RuntimeFailure):
    """An actor crashed more often than the restart intensity allows."""

    def __init__(self, actor: str, restarts: int, window_s: float, last_error: str) -> None:
        self.actor = actor
        self.restarts = restarts
        self.window_s = window_s
        self.last_error = last_error
        super().__init__(
            f"actor {actor!r} crashed {restarts} times within {window_s:g} s "
            f"(last error: {last_error}); giving up so the service manager can restart "
            "the process"
        )


class ActorUnavailableError(EdgeError):
    """A message could not be handed to an actor because it is stopped or restarting."""


class ServiceError(EdgeError):
    """An external service (MQTT broker, Kafka, PostgreSQL) failed or is unreachable."""
