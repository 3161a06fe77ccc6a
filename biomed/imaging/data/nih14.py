"""``data=nih14``: NIH ChestX-ray14, its Data_Entry CSV, image folders and official split lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from biomed.errors import InputError
from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import Columns, existing_folder, find_file, iter_csv
from biomed.imaging.data.files import FileDataset, normal_view

__all__ = ["NIHChestXray14"]


_NIH_COLUMNS = {  # the v2020 header splits two bracketed names at their commas
    "OriginalImage[Width": "original_width", "Height]": "original_height",
    "OriginalImagePixelSpacing[x": "pixel_spacing_x", "y]": "pixel_spacing_y",
}


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal images of 30,805 patients.

    ``root`` holds ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``; plain or .gz),
    the images (``images/`` or the download's ``images_001/images/`` ... ``images_012/images/``)
    and, when present, the official ``train_val_list.txt`` / ``test_list.txt``: test is
    official, and train+val is divided by patient. Labels: the 14 findings of the pipe-joined
    "Finding Labels" plus "No Finding", all 0/1.
    """

    name = "nih14"

    def __init__(self, root: str | Path, *, csv_file: str | Path | None = None,
                 image_dir: str | Path | None = None, **options: Any) -> None:
        root = existing_folder(root, "NIH ChestX-ray14")
        csv_path = (root / csv_file if csv_file else
                    find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"],
                               "Data_Entry CSV"))
        locate = _nih_locator(root, image_dir)
        official = _nih_official(root)
        names = L.NIH_LABELS
        col_of = {n: j for j, n in enumerate(names)}
        cols = Columns()
        rows: list[np.ndarray] = []
        for line, row in iter_csv(csv_path, ["Image Index", "Finding Labels", "Patient ID",
                                              "View Position"]):
            vec = np.zeros(len(names), np.float32)
            for f in row["Finding Labels"].split("|"):
                if f.strip() not in col_of:
                    raise InputError(csv_path, f"line {line}: unknown finding {f!r} in "
                                               f"'Finding Labels' (known: {', '.join(names)})")
                vec[col_of[f.strip()]] = 1.0
            rows.append(vec)
            name = row["Image Index"]
            rec = {"id": name, "patient_id": row["Patient ID"], "path": locate(name),
                   "view": normal_view(row["View Position"])}
            if official is not None:
                rec["official_split"] = official.get(name, "")
            rec.update({_NIH_COLUMNS.get(k, k): v for k, v in row.items() if k})
            cols.append(rec)
        values = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.NIH_TO_CANONICAL),
            **options)


def _nih_locator(root: Path, image_dir: str | Path | None) -> Callable[[str], str]:
    """Where an image name lives: ``image_dir``, ``root/images``, or the sharded download."""
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        return lambda name: f"{folder}/{name}"
    flat = root / "images"
    shards = sorted(p for p in root.glob("images_*/images") if p.is_dir())
    if flat.is_dir() or not shards:
        return lambda name: f"{flat}/{name}"
    where: dict[str, str] = {}
    for shard in shards:
        for entry in shard.iterdir():
            where.setdefault(entry.name, str(shard))
    return lambda name: f"{where.get(name, flat)}/{name}"


def _nih_official(root: Path) -> dict[str, str] | None:
    lists = {"trainval": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        return None
    out: dict[str, str] = {}
    for split, p in lists.items():
        for name in p.read_text(encoding="utf-8").split():
            if out.setdefault(name, split) != split:
                raise InputError(p, f"{name} is in both train_val_list.txt and test_list.txt")
    return out
