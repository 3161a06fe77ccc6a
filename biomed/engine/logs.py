"""What a training run shows and records: the progress bar, ``log.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar over optimizer steps (rate and ETA), silent when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, desc="train")


class MetricsLog:
    """``log.jsonl`` (one JSON object per row) and TensorBoard scalars, main process only.

    On resume the rows after the checkpoint's step are dropped: they belong to the part of the
    interrupted run that the resumed run repeats. A last line torn by a crash or a full disk is
    dropped too, and the kept rows are written to a temporary file that replaces the log, so
    that a failure while rewriting never loses the rows already there.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, truncate_after: int):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            rows, dropped = _complete_lines(self.path.read_bytes())
            if dropped:
                print(f"{self.path}: dropped {dropped} torn or unreadable line(s)")
            kept = [ln for ln, row in rows if row.get("step", 0) <= truncate_after]
            _replace_text(self.path, "".join(ln + "\n" for ln in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=truncate_after + 1 if truncate_after else None)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``log.jsonl`` (a line torn by a crash left out)."""
    p = Path(run_dir) / "log.jsonl"
    return [row for _, row in _complete_lines(p.read_bytes())[0]] if p.exists() else []


def _complete_lines(data: bytes) -> tuple[list[tuple[str, dict]], int]:
    """The complete rows of a JSONL file as ``(line, parsed)``, and how many lines were left
    out: a torn last line (cut inside its JSON by a crash or a full disk), and any other line
    that is not a JSON object."""
    dropped = 0
    rows = []
    for ln in data.decode("utf-8", errors="replace").splitlines():
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append((ln, row))
        else:
            dropped += 1
    return rows, dropped


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
