"""`biomed app` stopped with SIGTERM (docker stop, systemd, a CI timeout) removes its private
folder (uploads, images) as Ctrl+C does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_removes_the_private_folder(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}  # mkdtemp puts the private folder here
    cmd = [sys.executable, "-m", "biomed", "app", f"server_port={_free_port()}", "warmup=false",
           "models.diffusion=null", "models.classifier=null", "models.clip=null",
           "models.lm=null", "read_xray.measure_images=0", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if "serving on" in line or time.time() > deadline:
                break
        assert list(tmp.glob("biomed-app-*")), "no private folder while serving"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmp.glob("biomed-app-*")), "the private folder outlived SIGTERM"
