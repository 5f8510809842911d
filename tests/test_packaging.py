"""The wheel holds only loopwright/… and every subpackage on disk is declared."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = {"loops", "tools", "sandboxes", "traces"}


def _declared() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(cfg["tool"]["setuptools"]["packages"])


def _on_disk() -> set[str]:
    found = set()
    for top in TOP:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("loopwright", *rel)))
    return found


def test_every_subpackage_is_declared() -> None:
    assert _on_disk() == _declared()


@pytest.mark.slow
def test_wheel_contains_only_loopwright(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = list(tmp_path.glob("loopwright-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"loopwright", next(t for t in tops if t.endswith(".dist-info"))}
    for pkg in _declared():
        assert f"{pkg.replace('.', '/')}/__init__.py" in names
    assert "loopwright/loops/prompts/self_refine.toml" in names
    for asset in ("index.html", "app.js", "pages.js", "app.css"):  # the viewer ships its page
        assert f"loopwright/traces/view/static/{asset}" in names
    assert not any(n.startswith(("loops/", "tools/", "traces/", "sandboxes/")) for n in names)
