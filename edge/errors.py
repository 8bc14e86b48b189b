"""The one error tree of the runtime.

    EdgeError
    ├── ConfigError              a config file or value is wrong; carries every problem found
    ├── InputError               a file or argument given to a command cannot be used
    ├── RuntimeFailure           the actor graph cannot run
    │   ├── StartupError         an actor did not start or answer its ping
    │   └── CrashLoopError       an actor crashed more often than its restart intensity allows
    ├── ActorUnavailableError    a message could not be handed to an actor (stopped/restarting)
    ├── Stopped                  a wait gave up because its owner is stopping
    ├── ServiceError             an external service (broker, Kafka, database) failed us
    │   ├── ServiceUnavailable   unreachable, timed out, connection lost: the same request
    │   │                        may succeed later (retried with backoff)
    │   ├── ServiceRefused       it answered no to this input, for good (a constraint, a
    │   │                        value it cannot store): never retried, dead-lettered
    │   └── SchemaNotReady       the database lacks this version's migrations
    ├── MigrationError           a migration failed, or an applied one no longer matches
    └── CodecError               (edge.codecs.errors) a message or frame cannot be decoded

Adapters (``edge.io``) turn library errors into these with ``raise ... from exc``, so
actors and the CLI handle one tree and never import a library to catch its errors. The
CLI maps them to exit codes in one place (``edge.cli.EXIT_CODES``): bad input (config,
arguments, files, a schema not migrated, a failed migration) 2, a service unavailable 69,
a runtime failure 70. Codec errors live beside the codecs
(``edge.codecs``), which import nothing else of ours.
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


class InputError(EdgeError):
    """A file or argument given to a command cannot be used (a buffer that cannot be opened,
    a registry file that cannot be read)."""


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


class Stopped(EdgeError):
    """A wait (for Kafka to acknowledge, for a database) gave up because its owner is
    stopping; nothing was acknowledged upstream, so the work is done again after restart."""


class ServiceError(EdgeError):
    """An external service (MQTT broker, Kafka, PostgreSQL) failed us."""


class ServiceUnavailable(ServiceError):
    """Unreachable, timed out or the connection was lost: the same request may succeed
    later. Retried with backoff on the data path; at start, the process exits 69."""


class ServiceRefused(ServiceError):
    """The service refused this input for good (a constraint, a value it cannot store).
    ``code`` is the service's own (an SQLSTATE, a Kafka error name) for metrics and
    dead-letter reasons; ``detail`` says what and where."""

    def __init__(self, code: str, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


class SchemaNotReady(ServiceError):
    """The database lacks migrations this version needs: run ``edge server migrate``."""


class MigrationError(EdgeError):
    """A migration could not be applied, or an applied one no longer matches its file."""
