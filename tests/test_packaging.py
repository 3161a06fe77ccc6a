"""The wheel carries conf/ inside the package, so a non-editable install finds the configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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

    # Import the installed copy (not the checkout) from an unrelated folder and compose.
    code = ("import biomed, biomed.config as c; "
            "cfg = c.compose('quickstart', ['paths.run_dir=x']); "
            "print(biomed.__file__); print(c.config_dir()); print(cfg.command)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "biomed" / "conf")
    assert out[2] == "quickstart"
