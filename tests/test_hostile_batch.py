"""The hostile set (tests/helpers/hostile.py) and good radiographs in one SRC_DIR, through every
batch command: `biomed dicom inspect`, `biomed dicom ingest` (1 and 2 workers, PNG and DICOM
output), `predict` and a dataset's image cache. Every command finishes, every bad file is listed
with a one-line reason, every good file is processed, a rerun does no work twice, and no output
byte holds an identifying value of any input (header values, a marker folder name, a marker
patient and bytes hidden after the image), in plain, DICOM person-name and UTF-16 forms, in the
files and in their decoded pixel streams and text chunks."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid as dcm_uid

from biomed.cli import main
from biomed.errors import InputError
from biomed.imaging.dicom import batch, deid
from biomed.imaging.dicom.guard import Limits
from biomed.imaging.dicom.walk import find_files
from tests.helpers.dicom import identifying_values, make_dataset, save
from tests.helpers.hostile import HOSTILE, good_set, hostile_set

MARKER_FOLDER = "DOE_JOHN_123"
MARKER_NAME = "DOE^JOHN"
HIDDEN = b"DOE^JOHN MRN DOE_JOHN_123 "  # after the image inside Pixel Data (even length)
GOOD = ("holloway.dcm", "przybylski.dcm", "IM1.dcm")
# at the default limits the 8 MB deflate "bomb" is a real (blank) image; inspect and ingest
# are run with --max-file-mb 1, predict and the image cache with the defaults
BOMB = "deflate_bomb.dcm"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_batch") / "src"
    with warnings.catch_warnings():  # pydicom's, on writing the NaN and inf slopes
        warnings.simplefilter("ignore")
        hostile_set(root / MARKER_FOLDER / "bad")
    good_set(root / MARKER_FOLDER)
    doe = make_dataset("przybylski", index=7, rows=40, cols=32)
    doe.PatientName, doe.PatientID, doe.OtherPatientIDs = MARKER_NAME, MARKER_FOLDER, "DOE"
    doe.PixelData = doe.PixelData + HIDDEN  # trailing bytes after the image survive a copy
    save(doe, root / MARKER_FOLDER / "IM1.dcm")
    return root


def rel_names(src: Path) -> dict[str, str]:
    """File name -> its path under SRC_DIR."""
    return {p.name: p.relative_to(src).as_posix() for p in find_files(src)}


def markers(src: Path) -> list[str]:
    """Every identifying value of the inputs, in plain, person-name and spaced forms."""
    values = identifying_values("holloway") + identifying_values("przybylski")
    values += [MARKER_FOLDER, MARKER_NAME, "BARTSPACS", HIDDEN.decode().strip()]
    for path in find_files(src):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                values += [str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value
                           and str(e.value) not in dcm_uid.UID_dictionary]
        except Exception:
            continue
    forms = set()
    for v in values:
        forms |= {v, v.replace("^", " "), v.replace(" ", "^")}
    return sorted(forms)


def _streams(path: Path) -> list[bytes]:
    """The file's bytes and, for images, what a reader decodes from it."""
    out = [path.read_bytes()]
    if path.suffix == ".png":
        with Image.open(path) as im:
            out.append(np.asarray(im).tobytes())
            out += [f"{k}={v}".encode() for k, v in im.text.items()]
    elif path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        out.append(ds.pixel_array.tobytes())
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            out += list(pydicom.encaps.generate_frames(ds.PixelData))
    return out


def assert_no_marker(folder: Path, values: list[str], skip: tuple[str, ...] = ()) -> int:
    """No value, in ASCII/UTF-8 or UTF-16 (either byte order), case-insensitive, in any byte of
    any file under ``folder`` or of its decoded streams; returns the number of files."""
    needles = {}
    for v in values:
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            needles[v.lower().encode(enc)] = (v, enc)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in skip]
    for path in files:
        for data in _streams(path):
            low = data.lower()
            for needle, (v, enc) in needles.items():
                assert needle not in low, f"{v!r} ({enc}) found in {path}"
    return len(files)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _dicom(capsys, *argv) -> tuple[int, str, str]:
    code = main(["dicom", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# the whole set through every command


def test_inspect_lists_every_file_with_one_line(src, capsys):
    code, out, err = _dicom(capsys, "inspect", src, "--max-file-mb", "1")
    lines = out.splitlines()
    assert code == 1 and err == "" and len(lines) == len(HOSTILE) + len(GOOD)
    for name in HOSTILE:
        line = next(x for x in lines if x.startswith(f"{src}/{MARKER_FOLDER}/bad/{name}: "))
        assert ": error: " in line, line
    for name in GOOD:
        line = next(x for x in lines if x.startswith(f"{src}/{MARKER_FOLDER}/{name}: "))
        assert ": ok " in line, line
    assert "PanicException" in next(x for x in lines if "rle_panic" in x)


@pytest.mark.parametrize("workers,fmt", [(1, "png"), (2, "png"), (2, "dicom")])
def test_ingest_finishes_reports_every_bad_file_and_leaks_nothing(src, tmp_path, capsys,
                                                                   workers, fmt):
    out, key = tmp_path / "out", tmp_path / "deid.key"
    args = ("ingest", src, out, "--workers", workers, "--format", fmt, "--key-file", key,
            "--no-progress", "--max-file-mb", "1")
    code, stdout, _ = _dicom(capsys, *args)
    assert code == 0, stdout
    assert stdout.startswith(f"ingest: {len(GOOD)} written, 0 already done, {len(HOSTILE)} "
                             "skipped (reasons in errors.csv) in "), stdout
    hasher = deid.Deidentifier(deid.load_or_create_key(key))
    ids = {name: hasher.hash_text("id:" + rel) for name, rel in rel_names(src).items()}
    errors = {r["id"]: r for r in _csv(out / "errors.csv")}
    assert set(errors) == {ids[n] for n in HOSTILE}
    for row in errors.values():
        assert row["reason"] and "\n" not in row["reason"] and len(row["source"]) == 20
    assert "PanicException" in errors[ids["rle_panic.dcm"]]["reason"]
    manifest = _csv(out / "manifest.csv")
    assert {r["id"] for r in manifest} == {ids[n] for n in GOOD}
    assert all((out / r["output"]).is_file() for r in manifest)

    code, stdout, _ = _dicom(capsys, *args)  # a rerun does no work twice
    assert code == 0 and stdout.startswith(
        f"ingest: 0 written, {len(GOOD)} already done, 0 skipped; {len(HOSTILE)} failed in an "
        "earlier run"), stdout
    assert (out / "started.jsonl").read_text() == ""  # nothing was started
    assert len(_csv(out / "errors.csv")) == len(HOSTILE)

    # --format dicom included: Pixel Data is re-encoded from the decoded image, so the bytes
    # hidden after the image are gone (biomed.imaging.dicom.reencode)
    n = assert_no_marker(out, markers(src))
    assert n == len(GOOD) + 5  # images, manifest, errors, settings, started marks, lock


def test_predict_finishes_and_leaks_nothing(src, tmp_path, monkeypatch):
    from biomed.config import compose
    from biomed.imaging.classifier import predict as P
    from tests.helpers.classifier import tiny_classifier_dir

    model = tiny_classifier_dir(tmp_path / "clf", ["effusion"])
    overrides = [f"paths.run_dir={tmp_path / 'out'}", f"key_file={tmp_path / 'k'}",
                 f"classifier_dir={model}", f"inputs={src}"]
    monkeypatch.setattr(sys, "argv", ["biomed", "predict", *overrides])
    metrics = P.run(compose("predict", overrides))
    bad = [n for n in HOSTILE if n != BOMB]
    assert (metrics["predicted"], metrics["skipped"]) == (len(GOOD) + 1, len(bad))
    out = tmp_path / "out"
    skipped = _csv(out / "skipped.csv")
    assert all(r["reason"] and "\n" not in r["reason"] for r in skipped)
    assert any("PanicException" in r["reason"] for r in skipped)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["argv"][-1].startswith("inputs=<input:")
    assert_no_marker(out, markers(src))


def test_image_cache_build_records_every_bad_file_once(src, tmp_path):
    from biomed.imaging.data.folder_csv import FolderCSV

    table = src.parent / "labels.csv"
    names = rel_names(src)
    table.write_text("path,effusion\n" + "".join(f"{rel},1\n" for rel in names.values()))
    options = dict(csv_file=table, size=32, cache_dir=tmp_path / "cache", split=None,
                   progress=False, workers=2)
    ds = FolderCSV(src, **options)
    bad = {Path(p).name: why for p, why in ds.skipped}
    assert set(bad) == set(HOSTILE) - {BOMB}
    assert all(why and "\n" not in why for why in bad.values())
    assert len(ds) == len(GOOD) + 1 and ds._cache.decodes == len(names)
    again = FolderCSV(src, **options)  # a rerun decodes nothing, the bad files included
    assert again._cache.decodes == 0 and len(again.skipped) == len(bad)
    # the pixels and the reasons; the index keys are paths (see the next test)
    values = markers(src)
    assert_no_marker(tmp_path / "cache", values, skip=("index.jsonl",))
    index = (tmp_path / "cache" / "32x32" / "index.jsonl").read_text().splitlines()
    reasons = " ".join(json.loads(line).get("bad", "") for line in index[1:]).lower()
    assert reasons and not [v for v in values if v.lower() in reasons]


def test_image_cache_index_holds_no_source_path(src, tmp_path):
    from biomed.imaging.data.folder_csv import FolderCSV

    table = src.parent / "labels2.csv"
    table.write_text("path,effusion\n" + "".join(f"{rel},1\n"
                                                 for rel in rel_names(src).values()))
    FolderCSV(src, csv_file=table, size=32, cache_dir=tmp_path / "cache", split=None,
              progress=False)
    assert_no_marker(tmp_path / "cache", [MARKER_FOLDER])


# ---------------------------------------------------------------------------------------------
# a worker that dies, and a run that died


def test_a_dying_worker_is_attributed_and_the_batch_goes_on(src, tmp_path, capsys, monkeypatch):
    out, key = tmp_path / "out", tmp_path / "k"
    args = ("ingest", src / MARKER_FOLDER, out, "--workers", "2", "--key-file", key,
            "--no-progress", "--max-file-mb", "1")
    monkeypatch.setenv(batch.CRASH_HOOK_ENV, "przybylski.dcm")
    code, stdout, _ = _dicom(capsys, *args)
    assert code == 0 and stdout.startswith(
        f"ingest: {len(GOOD) - 1} written, 0 already done, {len(HOSTILE) + 1} skipped, "
        "1 crashed the decoder (reasons in errors.csv)"), stdout
    hasher = deid.Deidentifier(deid.load_or_create_key(key))
    crashed = hasher.hash_text("id:przybylski.dcm")
    errors = {r["id"]: r["reason"] for r in _csv(out / "errors.csv")}
    assert errors[crashed] == "the decoder crashed the worker process (exit status 70)"
    assert len(_csv(out / "manifest.csv")) == len(GOOD) - 1  # its neighbours were redone

    code, stdout, _ = _dicom(capsys, *args)  # skipped, not tried again
    assert stdout.startswith(f"ingest: 0 written, {len(GOOD) - 1} already done, 0 skipped; "
                             f"{len(HOSTILE) + 1} failed in an earlier run")
    monkeypatch.delenv(batch.CRASH_HOOK_ENV)
    code, stdout, _ = _dicom(capsys, *args, "--retry-failed")
    assert stdout.startswith(f"ingest: 1 written, {len(GOOD) - 1} already done, "
                             f"{len(HOSTILE)} skipped")
    assert crashed not in {r["id"] for r in _csv(out / "errors.csv")}


def test_a_file_an_earlier_run_died_on_is_isolated(tmp_path, capsys, monkeypatch):
    """--workers 1 decodes in-process: a crash there kills the run. Its started mark names the
    file; the next run decodes it alone in a child process, so it cannot kill the run again."""
    src, out, key = tmp_path / "src", tmp_path / "out", tmp_path / "k"
    good_set(src)
    args = ("ingest", src, out, "--workers", "1", "--key-file", key, "--no-progress")
    assert _dicom(capsys, *args, "--size", "8")[0] == 0  # creates OUT_DIR and its settings
    hasher = deid.Deidentifier(deid.load_or_create_key(key))
    (out / "manifest.csv").unlink()
    for img in (out / "images").iterdir():
        img.unlink()
    (out / "started.jsonl").write_text("")  # the earlier run died on holloway.dcm:
    batch.StartedMarks(out / "started.jsonl").mark(hasher.hash_text("id:holloway.dcm"))
    monkeypatch.setenv(batch.CRASH_HOOK_ENV, "holloway.dcm")  # it crashes again, in the child
    code, stdout, _ = _dicom(capsys, *args, "--size", "8")
    assert code == 0 and stdout.startswith("ingest: 1 written, 0 already done, 1 skipped, "
                                           "1 crashed the decoder")


def _work(args: str) -> str:
    """A worker function for `batch.run_tasks`: the task ``kill`` dies as the out-of-memory
    killer would end it."""
    if args == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return args


def _init_nothing() -> None:
    pass


def _init_dies() -> None:
    os._exit(3)


def test_run_tasks_survives_a_killed_worker_and_names_its_task(tmp_path):
    marks = batch.StartedMarks(tmp_path / "started.jsonl")
    tasks = [batch.Task(n, n, n) for n in ("a", "b", "kill", "d", "e", "f")]
    out = list(batch.run_tasks(tasks, _work, workers=2, init=_init_nothing, initargs=(),
                               marks=marks, crashed=lambda t, why: (t.id, why)))
    assert sorted(o for o in out if isinstance(o, str)) == ["a", "b", "d", "e", "f"]
    assert [o for o in out if isinstance(o, tuple)] == [
        ("kill", "the decoder crashed the worker process (killed by SIGKILL: out of memory?)")]
    assert marks.read() == {t.id for t in tasks}
    with pytest.raises(batch.WorkersFailed, match="died 3 times before starting any file"):
        list(batch.run_tasks(tasks[:2], _work, workers=2, init=_init_dies, initargs=(),
                             marks=marks, crashed=lambda t, why: why))


def test_torn_marks_and_unknown_lines_are_ignored(tmp_path):
    marks = batch.StartedMarks(tmp_path / "started.jsonl")
    marks.mark("a")
    with open(marks.path, "ab") as f:
        f.write(b'{"id": "b"')  # torn
    assert marks.read() == {"a"}
    batch.cut_torn_tail(marks.path)
    marks.mark("c")
    assert marks.read() == {"a", "c"}
    assert batch.death_reason(-11) == "killed by SIGSEGV"
    assert batch.death_reason(-9) == "killed by SIGKILL: out of memory?"


# ---------------------------------------------------------------------------------------------
# the one error policy outside the DICOM reader


class PanicException(BaseException):
    """What a Rust decoder raises (pyo3): a BaseException that `except Exception` misses."""


def test_image_cache_records_a_panicking_decoder_as_bad(tmp_path):
    from biomed.imaging.data.image_cache import ImageCache
    from biomed.imaging.data.read import read_xray

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(paths[-1])
    calls = []

    def decode(path, size):
        calls.append(path)
        if path.name == "1.png":
            raise PanicException("index out of bounds")
        return read_xray(path, size)

    res = ImageCache(tmp_path / "c", 8).build(paths, decode, progress=False)
    assert res.slots[1] is None and res.slots[0] is not None and res.slots[2] is not None
    assert res.bad == {str(paths[1]): "cannot read: PanicException: index out of bounds"}
    res = ImageCache(tmp_path / "c", 8).build(paths, decode, progress=False)
    assert len(calls) == 3 and res.decoded == 0  # recorded: a rerun does not crash again

    def interrupted(path, size):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ImageCache(tmp_path / "d", 8).build(paths[:1], interrupted, progress=False)


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height 8-bit gray, with an empty image stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_pillow_reads_are_capped_and_bombs_are_input_errors(tmp_path):
    from biomed.imaging.data.read import read_image_file, read_xray

    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)  # past Pillow's own bomb limit
    with pytest.raises(InputError, match="DecompressionBombError"):
        read_xray(bomb)
    big = _png_header(tmp_path / "big.png", 9000, 8000)  # 72 MP: under Pillow's, over ours
    with pytest.raises(InputError, match="image too large: the image header declares 8000x9000"):
        read_xray(big)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    assert read_image_file(small).shape == (10, 10)
    with pytest.raises(InputError, match=r"over the limit of 99 \(Limits.max_pixels\)"):
        read_image_file(small, limits=Limits(max_pixels=99))


def test_lock_is_released_when_its_holder_dies(tmp_path, capsys):
    """flock: held by an open file; a killed holder's lock goes with it (here: closed)."""
    src = tmp_path / "src"
    good_set(src)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, stdout, err = _dicom(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                                   tmp_path / "k")
        assert code == 2 and stdout == "" and err.count("\n") == 1
        assert "another ingest is writing into this folder" in err
    code, stdout, _ = _dicom(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                             tmp_path / "k", "--no-progress")
    assert code == 0 and stdout.startswith("ingest: 2 written")
