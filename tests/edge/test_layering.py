"""The house's rooms, checked: who may import whom (docs/architecture.md, "Layout").

- ``edge.codecs`` imports nothing of ours but ``edge.errors`` (and its own modules);
- ``edge.market`` (the market's logic) imports nothing of ours but the codecs and errors;
- ``edge.runtime`` imports no adapter, actor, tool or wiring;
- ``edge.io`` never imports actors, tools or the wiring;
- only the wiring (``edge.app``), the CLI and the tools import actors (besides actors);
- paho, sqlite3/sqlite-utils, kafka, psycopg and httpx are imported in ``edge.io`` only.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"edge": "edge", "actors": "edge.actors", "codecs": "edge.codecs"}
IO_LIBRARIES = {"paho", "sqlite3", "sqlite_utils", "kafka", "psycopg", "httpx"}
WIRING = ("edge.app", "edge.cli", "edge.tools")


def imports(root: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import in the package's folders.
    ``from X import Y`` counts as X and as X.Y (Y may be a module)."""
    found = []
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            module = ".".join((package, *parts)).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found += [(module, alias.name, node.lineno) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.append((module, node.module, node.lineno))
                    found += [(module, f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(root: Path) -> list[str]:
    out = []
    for importer, imported, line in imports(root):
        where = f"{importer}:{line} imports {imported}"
        ours = _within(imported, "edge")
        if _within(importer, "edge.codecs") and ours and not _within(imported, "edge.codecs", "edge.errors"):
            out.append(f"{where}: codecs import nothing of ours but edge.errors")
        if _within(importer, "edge.market") and ours and not _within(imported, "edge.market", "edge.codecs",
                                                                       "edge.errors"):
            out.append(f"{where}: the market's logic imports nothing of ours but codecs and errors")
        if _within(importer, "edge.runtime") and _within(imported, "edge.io", "edge.actors", *WIRING):
            out.append(f"{where}: the runtime imports no adapter, actor, tool or wiring")
        if _within(importer, "edge.io") and _within(imported, "edge.actors", *WIRING):
            out.append(f"{where}: adapters never import actors, tools or the wiring")
        if _within(imported, "edge.actors") and not _within(importer, "edge.actors", *WIRING):
            out.append(f"{where}: only the wiring, the CLI and the tools import actors")
        if imported.split(".")[0] in IO_LIBRARIES and not _within(importer, "edge.io"):
            out.append(f"{where}: I/O libraries are imported in edge.io only")
    return sorted(set(out))


def test_every_module_imports_only_what_its_layer_allows():
    assert violations(REPO) == []


def test_the_check_finds_a_wrong_import(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wrong = {
        "codecs/f2.py": "from edge.runtime import log\n",
        "edge/runtime/health.py": "from edge.io import mqtt\n",
        "edge/io/pg.py": "from edge.actors.sink import TimescaleSink\n",
        "edge/runtime/log.py": "import edge.actors.buffer\n",
        "actors/sink.py": "import psycopg\n",
        "edge/market/plan.py": "from edge.io import pg\n",
    }
    for name, line in wrong.items():
        path = tmp_path / name
        path.write_text(path.read_text(encoding="utf-8") + "\n" + line, encoding="utf-8")
    found = violations(tmp_path)
    assert {v.split(":")[0] for v in found} == {
        "edge.actors.sink", "edge.codecs.f2", "edge.io.pg", "edge.market.plan", "edge.runtime.health",
        "edge.runtime.log"}, found
