"""The wheel carries every module of the shipped packages, and conf/ inside the package, so a
non-editable install finds the code and the configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("biomed", "apps")  # what the wheel ships (apps/ once it exists)


def _package_files() -> list[Path]:
    """Every .py file of the shipped packages."""
    return [p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py")
            if "__pycache__" not in p.parts]


def test_every_package_folder_is_a_package():
    """Each folder of Python files holds an ``__init__.py``: a folder without one still imports
    from a checkout (as a namespace package), so nothing else notices, while package-finding
    tools (setuptools' ``find_packages``) leave it out of a wheel."""
    folders = {p.parent for p in _package_files()}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py: {missing}"


def test_wheel_carries_conf_and_composes_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("biomed-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    conf_files = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"biomed/conf/{f}" for f in conf_files} <= names
    assert not any(n.startswith(("tests/", "outputs/")) for n in names)
    sources = {p.relative_to(ROOT).as_posix() for p in _package_files()}
    assert sources <= names, f"not in the wheel: {sorted(sources - names)[:10]}"

    # Import the installed copy (not the checkout) from an unrelated folder and compose.
    code = ("import biomed, biomed.config as c; "
            "cfg = c.compose('quickstart', ['paths.run_dir=x']); "
            "print(biomed.__file__); print(c.config_dir()); print(cfg.command)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "biomed" / "conf")
    assert out[2] == "quickstart"
