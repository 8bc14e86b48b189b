"""edge.codecs is pure: no I/O library, no clock, no logging set-up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_MODULES = {"paho", "sqlite3", "sqlite_utils", "kafka", "psycopg", "pykka", "socket",
                     "http", "urllib", "requests", "logging", "time", "threading", "asyncio",
                     "subprocess", "os", "io", "pathlib", "prometheus_client"}
FORBIDDEN_CALLS = {"open", "print", "input"}
CLOCK_ATTRS = {"now", "utcnow", "today", "time", "monotonic"}


def test_importing_the_codecs_loads_no_io_library():
    modules = [f"edge.codecs.{p.stem}" for p in (REPO / "codecs").glob("*.py") if p.stem != "__init__"]
    code = (f"import sys; before = set(sys.modules); import {', '.join(modules)}; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    roots = {name.split(".")[0] for name in loaded.stdout.split()}
    assert not roots & (FORBIDDEN_MODULES - {"os", "io", "time", "logging", "threading"}), roots
    assert "paho" not in roots and "sqlite3" not in roots and "kafka" not in roots


def test_the_codec_sources_use_no_io_clock_or_logging():
    problems = []
    for path in sorted((REPO / "codecs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{path.name}:{node.lineno} imports {n}" for n in names
                             if n.split(".")[0] in FORBIDDEN_MODULES]
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                    problems.append(f"{path.name}:{node.lineno} calls {func.id}()")
                if isinstance(func, ast.Attribute) and func.attr in CLOCK_ATTRS:
                    problems.append(f"{path.name}:{node.lineno} reads the clock ({func.attr}())")
    assert problems == []
