"""One distribution, one import package `edge` with `edge.actors` and `edge.codecs`
mounted from the top-level folders: from the editable install and from a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "import edge, edge.actors, edge.codecs, edge.runtime.graph; print(edge.codecs.__file__)"


def test_the_editable_install_maps_the_folders():
    import edge.actors
    import edge.codecs

    assert Path(edge.codecs.__file__) == REPO / "codecs" / "__init__.py"
    assert Path(edge.actors.__file__) == REPO / "actors" / "__init__.py"
    import codecs

    assert codecs.__name__ == "codecs" and hasattr(codecs, "lookup")  # the stdlib's, unshadowed


@pytest.mark.slow
def test_a_built_wheel_holds_and_imports_the_mapped_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("edge_runtime-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge/codecs/__init__.py" in names and "edge/actors/__init__.py" in names
    assert not any(n.startswith(("codecs/", "actors/", "tests/")) for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # -I: isolated from the editable install and the repo; the deps come from the venv.
    venv_site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    code = f"import sys; sys.path[:0] = [{str(target)!r}, {str(venv_site)!r}]; {PROBE}"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(target / "edge" / "codecs" / "__init__.py")
