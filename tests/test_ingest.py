"""`biomed dicom inspect|ingest` on a PACS-export-like folder: outputs, skipped files, no
identifier left behind in any output byte, resuming, settings checks, DICOM output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid as dcm_uid

from biomed import sources
from biomed.cli import TOOLS, main
from biomed.imaging.core.pixels import to_uint16
from biomed.imaging.dicom.ingest import ERROR_COLUMNS, MANIFEST_COLUMNS, find_files, shrink
from biomed.imaging.dicom.read import ReadOptions, read_dicom
from tests.helpers.dicom import identifying_values, make_dataset, save

FOLDER_A = "HOLLOWAY_MARGARET_MRN00482913"
FOLDER_B = "PRZYBYLSKI_TOMASZ_MRN00917354"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A PACS export: patient names in folder names, mixed syntaxes, and junk."""
    src = tmp_path_factory.mktemp("export")
    a, b = src / FOLDER_A / "20190314_CHEST_PA", src / FOLDER_B
    save(make_dataset("holloway", index=0, rows=96, cols=72), a / "IMG0001.dcm")
    j2k = make_dataset("holloway", index=1, rows=96, cols=72, photometric="MONOCHROME1")
    j2k.compress(dcm_uid.JPEG2000Lossless)
    save(j2k, a / "IMG0002.dcm")
    rle = make_dataset("holloway", index=2, rows=96, cols=72, bits_stored=14,
                       window=(8000, 12000))
    rle.compress(dcm_uid.RLELossless)
    save(rle, a / "IMG0003")  # PACS exports often have no extension
    save(make_dataset("holloway", index=3, burned_in="YES"), a / "IMG0004.dcm")
    save(make_dataset("przybylski", index=0, rows=80, cols=100, spacing=["0.15", "0.15"]),
         b / "CR_0001.dcm")
    (b / "report.txt").write_text("Chest X-ray of PRZYBYLSKI^TOMASZ: no acute findings.\n")
    whole = save(make_dataset("przybylski", index=1), b / "whole.dcm")
    (b / "truncated.dcm").write_bytes(Path(whole).read_bytes()[:-700])
    Path(whole).unlink()
    sr = make_dataset("przybylski", index=2)
    del sr.PixelData
    for kw in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        delattr(sr, kw)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = dcm_uid.BasicTextSRStorage
    save(sr, b / "SR_0001.dcm")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return src


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["dicom", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _identifiers(export: Path) -> list[str]:
    """Every identifying value of the inputs: header values, folder names, instance UIDs."""
    values = identifying_values("holloway") + identifying_values("przybylski")
    values += [FOLDER_A, FOLDER_B, "BARTSPACS", "MRN00482913", "MRN00917354"]
    for path in find_files(export):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        values += [str(e.value) for e in ds.iterall()
                   if e.VR == "UI" and e.value and str(e.value) not in dcm_uid.UID_dictionary]
    return sorted(set(values))


def _assert_nothing_identifying(out_dir: Path, identifiers: list[str]) -> int:
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes().lower()
        for value in identifiers:
            assert value.lower().encode() not in data, f"{value!r} found in {path}"
    return len(files)


def test_dicom_tool_is_registered():
    assert TOOLS["dicom"][0] == "biomed.imaging.dicom.ingest:dicom_main"


def test_ingest_png_with_hashed_paths_leaves_no_identifier(export, tmp_path, capsys):
    out, key = tmp_path / "out", tmp_path / "secret" / "deid.key"
    code, stdout, _ = _run(capsys, "ingest", export, out, "--size", "48", "--hash-paths",
                           "--workers", "2", "--key-file", key, "--no-progress")
    assert code == 0
    assert stdout.startswith("ingest: 4 written, 0 already done, 4 skipped, 1 for burned-in "
                             "annotation (reasons in errors.csv) in ")

    rows = _csv(out / "manifest.csv")
    assert len(rows) == 4 and list(rows[0]) == list(MANIFEST_COLUMNS)
    assert len({r["patient_id"] for r in rows}) == 2  # pseudonyms keep patients apart
    for r in rows:
        assert len(r["source"]) == 20 and "/" not in r["source"]  # a keyed hash, no path
        assert r["output"] == f"images/{r['id']}.png"
        with Image.open(out / r["output"]) as im:
            assert im.mode == "I;16" and max(im.size) == 48
        assert r["study_date"] and r["study_date"] != "20190314"
        assert r["sop_uid"].startswith("2.25.") and r["patient_sex"] == ""
    spaced = next(r for r in rows if r["columns"] == "100")  # Pixel Spacing over Imager's
    assert (spaced["pixel_spacing"], spaced["spacing_source"]) == ("0.15\\0.15", "PixelSpacing")
    assert (spaced["output_rows"], spaced["output_columns"]) == ("38", "48")
    assert spaced["output_pixel_spacing"] == f"{0.15 * 80 / 38:.6g}\\0.3125"  # 80x100 -> 38x48
    syntaxes = sorted(r["transfer_syntax"] for r in rows)
    assert syntaxes == ["Explicit VR Little Endian", "Explicit VR Little Endian",
                        "JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless"]

    errors = _csv(out / "errors.csv")
    assert list(errors[0]) == list(ERROR_COLUMNS) and len(errors) == 4
    reasons = sorted(e["reason"] for e in errors)
    assert reasons[0].startswith("Burned In Annotation is YES")
    assert reasons[1].startswith("no pixel data (no (7FE0,0010) element; Basic Text SR")
    assert reasons[2].startswith("not a DICOM file")
    assert reasons[3].startswith("truncated file: Pixel Data declares")

    n = _assert_nothing_identifying(out, _identifiers(export))
    # images, manifest, errors, settings, started marks, lock (the key lives elsewhere)
    assert n == 4 + 5

    # the PNG holds what the reader gives, shrunk: 16-bit, lungs dark
    native = next(r for r in rows if r["transfer_syntax"] == "Explicit VR Little Endian"
                  and r["columns"] == "72")
    expected = to_uint16(shrink(read_dicom(export / FOLDER_A / "20190314_CHEST_PA" /
                                           "IMG0001.dcm").image, 48))
    with Image.open(out / native["output"]) as im:
        assert np.array_equal(np.asarray(im), expected)


def test_ingest_resumes_and_refuses_other_settings(export, tmp_path, capsys):
    out, key = tmp_path / "out", tmp_path / "deid.key"
    args = ("ingest", export, out, "--size", "40", "--key-file", key, "--workers", "1",
            "--plain-paths")
    assert _run(capsys, *args)[0] == 0
    first = _csv(out / "manifest.csv")
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and stdout.startswith(
        "ingest: 0 written, 4 already done, 0 skipped; 4 failed in an earlier run (see "
        "errors.csv; --retry-failed tries them again) in ")
    (out / first[0]["output"]).unlink()  # a lost image is redone, not duplicated
    code, stdout, _ = _run(capsys, *args)
    assert stdout.startswith("ingest: 1 written, 3 already done, 0 skipped; 4 failed")
    again = _csv(out / "manifest.csv")
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in first)
    errors = _csv(out / "errors.csv")
    assert len(errors) == 4  # kept, not tried again
    code, stdout, _ = _run(capsys, *args, "--retry-failed")
    assert stdout.startswith("ingest: 0 written, 4 already done, 4 skipped, 1 for burned-in")
    assert _csv(out / "errors.csv") == errors  # tried again and recorded anew, once each
    assert {r["source"].split("/")[0] for r in again} == {FOLDER_A, FOLDER_B}  # not hashed

    code, _, err = _run(capsys, "ingest", export, out, "--size", "64", "--key-file", key)
    assert code == 2 and "was ingested with other settings: size 40 (now 64)" in err
    code, _, err = _run(capsys, "ingest", export, out, "--size", "40", "--key-file",
                        tmp_path / "other.key")
    assert code == 2 and "key_id" in err
    code, _, err = _run(capsys, "ingest", tmp_path / "nowhere", out)
    assert code == 2 and err.strip().endswith("nowhere: folder not found")


def test_ingest_dicom_format_with_burned_in_opt_in(export, tmp_path, capsys):
    out = tmp_path / "dcm"
    code, stdout, _ = _run(capsys, "ingest", export, out, "--format", "dicom", "--workers", "1",
                           "--allow-burned-in", "--dates", "remove", "--hash-paths",
                           "--key-file", tmp_path / "k")
    assert code == 0 and stdout.startswith("ingest: 5 written, 0 already done, 3 skipped")
    rows = _csv(out / "manifest.csv")
    for r in rows:
        ds = pydicom.dcmread(out / r["output"])
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyDate == ""
        assert ds.PatientID == r["patient_id"] and ds.SOPInstanceUID == r["sop_uid"]
    j2k = next(r for r in rows if r["photometric"] == "MONOCHROME1")  # IMG0002, JPEG 2000
    original = export / FOLDER_A / "20190314_CHEST_PA" / "IMG0002.dcm"
    # re-encoded from the decoded pixels (only the image survives), the image unchanged
    assert np.array_equal(read_dicom(out / j2k["output"]).image, read_dicom(original).image)
    _assert_nothing_identifying(out, _identifiers(export))
    code, _, err = _run(capsys, "ingest", export, tmp_path / "x", "--format", "dicom",
                        "--size", "64")
    assert code == 2 and "--size applies to --format png" in err


def test_output_folder_inside_the_source_is_not_ingested(tmp_path, capsys):
    src = tmp_path / "src"
    save(make_dataset(rows=16, cols=16), src / "a.dcm")
    args = ("ingest", src, src / "ingested", "--key-file", tmp_path / "k", "--workers", "1")
    assert _run(capsys, *args)[0] == 0
    code, stdout, _ = _run(capsys, *args)
    assert stdout.startswith("ingest: 0 written, 1 already done, 0 skipped")


def test_inspect_prints_one_line_per_file_and_fails_if_any_failed(export, capsys):
    good = export / FOLDER_A / "20190314_CHEST_PA" / "IMG0002.dcm"
    bad = export / FOLDER_B / "truncated.dcm"
    code, stdout, _ = _run(capsys, "inspect", good)
    assert code == 0
    assert stdout == (f"{good}: ok DX, PA, 96x72, MONOCHROME1, 12-bit, JPEG 2000 Image "
                      "Compression (Lossless Only), spacing 0.139\\0.139 mm, window 2048/4096 "
                      "LINEAR, inverted (MONOCHROME1)\n")
    code, stdout, _ = _run(capsys, "inspect", good, bad, "--json")
    records = json.loads(stdout)
    assert code == 1 and [r["ok"] for r in records] == [True, False]
    assert records[1]["error"].startswith("truncated file")
    assert "study_uid" not in records[0] and records[0]["bits_stored"] == 12
    code, stdout, _ = _run(capsys, "inspect", export / FOLDER_B)
    lines = stdout.splitlines()
    assert code == 1 and len(lines) == 4 and all(": ok " in x or ": error: " in x for x in lines)
    assert f"{export / FOLDER_B / 'report.txt'}: error: not a DICOM file" in stdout


@pytest.mark.data
@pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                    reason="run `biomed data fetch chest_dicom` first")
def test_ingest_real_radiographs(tmp_path, capsys):
    src = tmp_path / "RG1"
    src.mkdir()
    for name in ("RG1_UNCI", "RG1_J2KI"):
        shutil.copy(sources.path("chest_dicom", f"{name}.dcm"), src / f"{name}.dcm")
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "ingest", src, out, "--size", "256", "--key-file",
                           tmp_path / "k", "--plain-paths")
    assert code == 0 and stdout.startswith("ingest: 2 written")
    rows = {r["source"]: r for r in _csv(out / "manifest.csv")}
    imgs = {s: np.asarray(Image.open(out / r["output"])) / 65535 for s, r in rows.items()}
    unc, j2k = imgs["RG1_UNCI.dcm"], imgs["RG1_J2KI.dcm"]
    assert unc.shape == j2k.shape == (256, 241)
    assert np.abs(unc - j2k).mean() < 0.01  # J2K decoded at half resolution, then shrunk
    assert rows["RG1_UNCI.dcm"]["pixel_spacing"] == ""  # [0,0]: unknown
    assert unc[70:140, 40:85].mean() + 0.1 < unc[70:170, 112:130].mean()  # lungs darker
    ref = to_uint16(shrink(read_dicom(sources.path("chest_dicom", "RG1_UNCI.dcm"),
                                      ReadOptions()).image, 256))
    assert np.array_equal(np.asarray(Image.open(out / rows["RG1_UNCI.dcm"]["output"])), ref)
    _assert_nothing_identifying(out, ["CompressedSamples", "9RG1", "19400305", "Hamburg",
                                      "THORAVISION", "20040826", "19950926",
                                      "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"])


def test_inspect_names_an_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty_export"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # hidden files do not count
    code, stdout, err = _run(capsys, "inspect", empty)
    assert code == 1 and stdout == ""
    assert err == f"error: no files to inspect in {empty} (empty folder; hidden files are " \
        "ignored)\n"


def _mixed_frames_folder(root: Path) -> Path:
    src = root / "mixed"
    save(make_dataset(rows=16, cols=12), src / "single.dcm")
    multi = make_dataset(index=1, rows=8, cols=6, window=None)
    frames = np.stack([np.full((8, 6), v, np.uint16) for v in (0, 1000, 4095)])
    multi.NumberOfFrames, multi.PixelData = 3, frames.astype("<u2").tobytes()
    save(multi, src / "multi.dcm")
    return src


def test_frame_option_reads_a_folder_of_single_and_multi_frame_files(tmp_path, capsys):
    src = _mixed_frames_folder(tmp_path)
    code, stdout, _ = _run(capsys, "inspect", src, "--frame", "1")
    assert code == 0 and stdout.count(": ok ") == 2 and "3 frames" in stdout
    code, stdout, _ = _run(capsys, "ingest", src, tmp_path / "out", "--frame", "1",
                           "--workers", "1", "--key-file", tmp_path / "k")
    assert code == 0 and stdout.startswith("ingest: 2 written, 0 already done, 0 skipped")
    rows = {r["frames"]: r for r in _csv(tmp_path / "out" / "manifest.csv")}
    assert rows["3"]["frame"] == "1" and rows["1"]["frame"] == ""
    for action in ("inspect", "ingest"):  # the help says so
        with pytest.raises(SystemExit):
            main(["dicom", action, "--help"])
        assert "single-frame images are read as they are" in " ".join(
            capsys.readouterr().out.split())


def test_output_side_errors_are_checked_before_anything_is_created(tmp_path, capsys):
    src = tmp_path / "src"
    save(make_dataset(rows=16, cols=16), src / "a.dcm")
    (tmp_path / "afile").write_text("not a folder")
    key = tmp_path / "k"
    cases = [((src, tmp_path / "afile", "--key-file", key),
              f"{tmp_path / 'afile'}: OUT_DIR exists and is not a folder"),
             ((src, tmp_path / "afile" / "out", "--key-file", key),
              f"{tmp_path / 'afile' / 'out'}: cannot create OUT_DIR: {tmp_path / 'afile'} is "
              "not a folder"),
             ((src, tmp_path / "out", "--key-file", tmp_path),
              f"{tmp_path}: not a de-identification key file (it is a folder or a device)"),
             ((src, tmp_path / "out", "--key-file", tmp_path / "afile"),
              f"{tmp_path / 'afile'}: not a de-identification key (expected hex)"),
             ((src, tmp_path / "out", "--key-file", tmp_path / "afile" / "k"),
              f"{tmp_path / 'afile' / 'k'}: cannot create the de-identification key file: "
              f"{tmp_path / 'afile'} is not a folder")]
    if Path("/proc/self").is_dir():  # procfs: no folder can be made in it, even by root
        cases.append(((src, "/proc/biomed_out", "--key-file", key),
                      "/proc/biomed_out: cannot create OUT_DIR in /proc ("))
    for argv, message in cases:
        code, stdout, err = _run(capsys, "ingest", *argv, "--workers", "1")
        assert code == 2 and stdout == "", argv
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists() and not key.exists()
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_truncated_jpeg2000_is_one_reason_and_no_warning(tmp_path, capsys, recwarn):
    from tests.helpers.dicom import truncated_j2k

    src = tmp_path / "src"
    src.mkdir()
    cut = truncated_j2k(src)
    code, stdout, err = _run(capsys, "inspect", cut)
    assert code == 1 and err == ""
    assert stdout == (f"{cut}: error: truncated encapsulated Pixel Data: the file ends inside "
                      "the compressed pixel data, before its sequence delimiter (the header is "
                      "intact)\n")
    code, stdout, err = _run(capsys, "ingest", src, tmp_path / "out", "--workers", "1",
                             "--key-file", tmp_path / "k", "--no-progress")
    assert code == 0 and stdout.startswith("ingest: 0 written, 0 already done, 1 skipped")
    assert [e["reason"] for e in _csv(tmp_path / "out" / "errors.csv")] == [
        "truncated encapsulated Pixel Data: the file ends inside the compressed pixel data, "
        "before its sequence delimiter (the header is intact)"]
    assert [str(w.message) for w in recwarn if "pydicom" in w.filename] == []


def test_lut_explanations_and_code_meanings_leave_no_identifier(tmp_path, capsys):
    """Free text inside kept sequences: VOI LUT explanation, coded view and anatomy meanings."""
    from pydicom.dataset import Dataset

    src = tmp_path / "src"
    ds = make_dataset("przybylski", rows=16, cols=12, window=None)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 16])
    lut.add_new("LUTData", "US", list(range(0, 65536, 16)))
    lut.LUTExplanation = "Soft tissue for PRZYBYLSKI^TOMASZ"
    ds.VOILUTSequence = [lut]
    ds.RescaleType = "PRZYBYLSKI"
    save(ds, src / "lut.dcm")
    for fmt in ("dicom", "png"):
        out = tmp_path / fmt
        code, stdout, _ = _run(capsys, "ingest", src, out, "--format", fmt, "--workers", "1",
                               "--key-file", tmp_path / "k", "--hash-paths")
        assert code == 0 and stdout.startswith("ingest: 1 written"), stdout
        _assert_nothing_identifying(out, [*_identifiers(src), "Soft tissue"])
    back = pydicom.dcmread(next((tmp_path / "dicom" / "images").glob("*.dcm")))
    assert back.ViewCodeSequence[0].CodeMeaning == "postero-anterior"
    assert back.VOILUTSequence[0].LUTDescriptor == [4096, 0, 16] and back.RescaleType == "US"


def test_bench_naive_loop_saves_png_at_the_ingest_compression_level(tmp_path):
    """The baseline is not handicapped: same zlib level as ingest (Pillow's default is 6)."""
    import importlib.util
    import zlib

    from biomed.imaging.dicom.ingest import PNG_COMPRESSION

    bench_file = Path(__file__).resolve().parents[1] / "bench" / "dicom_ingest.py"
    spec = importlib.util.spec_from_file_location("bench_dicom_ingest", bench_file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    files = [Path(save(make_dataset(index=i, rows=64, cols=48), tmp_path / f"{i}.dcm"))
             for i in range(2)]
    (tmp_path / "naive").mkdir()
    bench.naive(files, tmp_path / "naive", 32)

    def zlib_level(png: Path) -> int:  # FLEVEL of the first IDAT's zlib header
        data = png.read_bytes()
        idat = data[data.index(b"IDAT") + 4:]
        return idat[1] >> 6

    expected = zlib.compressobj(PNG_COMPRESSION).compress(b"x" * 100)
    expected += zlib.compressobj(PNG_COMPRESSION).flush()
    for png in sorted((tmp_path / "naive").glob("*.png")):
        assert zlib_level(png) == expected[1] >> 6 == 1  # level 3: "fast" (level 6: 2)
        with Image.open(png) as im:
            assert im.mode == "I;16" and im.size == (24, 32)


# ---------------------------------------------------------------------------------------------
# hardening: one policy for every failure, checked images, resume, lock, settings, paths


class PanicException(BaseException):
    """What a Rust decoder raises (pyo3): a BaseException that `except Exception` misses."""


def _one(tmp_path: Path, folder: str = "DOE_JOHN_123") -> Path:
    src = tmp_path / "src"
    save(make_dataset(rows=16, cols=12), src / folder / "IM1")
    return src


def test_a_panic_outside_the_reader_is_one_error_with_one_worker(tmp_path, capsys, monkeypatch):
    from biomed.imaging.dicom import deid

    def panic(self, ds, path, **kw):
        raise PanicException(f"index out of bounds in {path}")

    monkeypatch.setattr(deid.Deidentifier, "deidentify", panic)
    src, out = _one(tmp_path), tmp_path / "out"
    code, stdout, _ = _run(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                           tmp_path / "k", "--no-progress")
    assert code == 0 and stdout.startswith("ingest: 0 written, 0 already done, 1 skipped")
    [row] = _csv(out / "errors.csv")
    assert row["reason"] == "cannot ingest: PanicException: index out of bounds in <file>"
    monkeypatch.setattr(deid.Deidentifier, "deidentify",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, err = _run(capsys, "ingest", src, tmp_path / "out2", "--workers", "1",
                        "--key-file", tmp_path / "k")
    assert (code, err) == (130, "interrupted\n")  # Ctrl-C still stops the batch
    assert _csv(tmp_path / "out2" / "errors.csv") == []  # not taken for the file's fault


def test_a_nan_image_is_never_written(tmp_path, capsys, monkeypatch):
    from biomed.imaging.dicom import ingest as ingest_mod

    real = ingest_mod.dataset_to_image

    def nan_image(ds, path, options):
        decoded = real(ds, path, options)
        img = decoded.image.copy()
        img[0, 0] = np.nan
        return type(decoded)(image=img, meta=decoded.meta, notes=decoded.notes)

    monkeypatch.setattr(ingest_mod, "dataset_to_image", nan_image)
    src, out = _one(tmp_path), tmp_path / "out"
    code, stdout, _ = _run(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                           tmp_path / "k", "--no-progress")
    assert code == 0 and stdout.startswith("ingest: 0 written, 0 already done, 1 skipped")
    assert list((out / "images").iterdir()) == []
    assert "finite" in _csv(out / "errors.csv")[0]["reason"]


def test_sources_are_hashed_by_default_and_reasons_hold_no_path(tmp_path, capsys):
    src = _one(tmp_path)
    (src / "DOE_JOHN_123" / "notes.txt").write_text("not DICOM")
    args = ("--workers", "1", "--key-file", tmp_path / "k", "--no-progress")
    assert _run(capsys, "ingest", src, tmp_path / "hashed", *args)[0] == 0
    for name in ("manifest.csv", "errors.csv"):
        text = (tmp_path / "hashed" / name).read_text()
        assert "DOE_JOHN_123" not in text and "IM1" not in text and "notes" not in text
    assert _run(capsys, "ingest", src, tmp_path / "plain", *args, "--plain-paths")[0] == 0
    assert _csv(tmp_path / "plain" / "manifest.csv")[0]["source"] == "DOE_JOHN_123/IM1"
    code, _, err = _run(capsys, "ingest", src, tmp_path / "plain", *args)
    assert code == 2 and "hash_paths False (now True)" in err


def test_a_torn_manifest_line_is_cut_not_glued(tmp_path, capsys):
    src, out = _one(tmp_path), tmp_path / "out"
    args = ("ingest", src, out, "--workers", "1", "--key-file", tmp_path / "k", "--no-progress")
    assert _run(capsys, *args)[0] == 0
    manifest = out / "manifest.csv"
    manifest.write_bytes(manifest.read_bytes()[:-6])  # a full disk tore the last row
    save(make_dataset("przybylski", rows=16, cols=12), src / "B" / "IM2")
    code, stdout, _ = _run(capsys, *args)
    rows = _csv(manifest)  # the torn row is dropped, not glued to the next one
    assert len(rows) == 2 and all(len(r) == len(MANIFEST_COLUMNS) and None not in r
                                  for r in rows)
    assert all((out / r["output"]).is_file() and r["patient_age"] == "" for r in rows)
    assert code == 0 and stdout.startswith("ingest: 2 written, 0 already done, 0 skipped")


def test_the_burned_in_policy_is_part_of_the_settings(tmp_path, capsys):
    src, out = _one(tmp_path), tmp_path / "out"
    args = ("ingest", src, out, "--workers", "1", "--key-file", tmp_path / "k", "--no-progress")
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args, "--allow-burned-in")
    assert code == 2 and "allow_burned_in False (now True)" in err
    assert json.loads((out / "ingest.json").read_text())["allow_burned_in"] is False


def test_symlinks_out_of_the_source_are_not_followed(tmp_path, capsys):
    src = _one(tmp_path)
    outside = tmp_path / "elsewhere"
    save(make_dataset("przybylski", rows=16, cols=12), outside / "secret.dcm")
    (src / "link.dcm").symlink_to(outside / "secret.dcm")
    (src / "linkdir").symlink_to(outside)
    (src / "DOE_JOHN_123" / "loop").symlink_to(src)  # a cycle
    (src / "again.dcm").symlink_to(src / "DOE_JOHN_123" / "IM1")  # inside: the same file
    (src / "broken.dcm").symlink_to(tmp_path / "gone.dcm")
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                           tmp_path / "k", "--no-progress")
    assert code == 0 and stdout.startswith("ingest: 1 written, 0 already done, 3 skipped")
    assert sorted(r["reason"] for r in _csv(out / "errors.csv")) == [
        "a broken symbolic link (or a cycle of links)",
        "a symbolic link to a file outside SRC_DIR (not followed)",
        "a symbolic link to a folder outside SRC_DIR (not followed)"]
    refused: list = []
    files = find_files(src, refused=refused)
    assert [f.relative_to(src).as_posix() for f in files] == ["DOE_JOHN_123/IM1"]
    assert sorted(p.name for p, _ in refused) == ["broken.dcm", "link.dcm", "linkdir"]


def test_limits_are_flags_of_inspect_and_ingest(tmp_path, capsys):
    src = _one(tmp_path)
    f = src / "DOE_JOHN_123" / "IM1"
    code, stdout, _ = _run(capsys, "inspect", f, "--max-pixels", "100")
    assert code == 1 and "image too large: the header declares 16x12" in stdout
    code, stdout, _ = _run(capsys, "inspect", f, "--max-file-mb", "0.001", "--header-only")
    assert code == 1 and "file too large" in stdout
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "ingest", src, out, "--workers", "1", "--key-file",
                           tmp_path / "k", "--no-progress", "--max-pixels", "100")
    assert code == 0 and stdout.startswith("ingest: 0 written, 0 already done, 1 skipped")
    assert "over the limit of 100" in _csv(out / "errors.csv")[0]["reason"]
    code, _, err = _run(capsys, "inspect", f, "--max-pixels", "0")
    assert code == 2 and err.count("\n") == 1
