"""apps.uploads: what the app does with an uploaded file before any model sees it.

DICOM is de-identified on arrival with the app's own key (never the dataset key), its remaining
header holds none of the identifying values; oversized files, pixel bombs, corrupt files and
files that are not images are one-line errors naming the upload; uploads are deleted after
reading; JPEG 2000 DICOM decodes with the installed Pillow.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom import uid as dcm_uid

from apps import uploads
from biomed import sources
from biomed.errors import ConfigError, InputError
from biomed.imaging.dicom.deid import Deidentifier
from biomed.imaging.dicom.keys import default_key_file, load_or_create_key
from tests.helpers.dicom import PATIENTS, identifying_values, make_dataset, save
from tests.helpers.hostile import HOSTILE, hostile_set


@pytest.fixture
def cfg(tmp_path: Path) -> dict:
    return {"uploads": {"key_file": str(tmp_path / "keys" / "app.key"), "delete_after_s": 0}}


@pytest.fixture
def deid(cfg: dict) -> Deidentifier:
    return uploads.app_deidentifier(cfg)


def _header_text(upload: uploads.Upload) -> str:
    return "\n".join(" | ".join(row) for row in upload.header)


def _one_line_error(excinfo, name: str, tmp_path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"{name}: "), msg
    assert str(tmp_path) not in msg  # named by its file name, not the server's temp path
    return msg


# ---------------------------------------------------------------------------------------------
# DICOM: de-identified on arrival, with the app's own key


def test_dicom_is_deidentified_on_arrival_and_deleted(tmp_path: Path, cfg: dict, deid) -> None:
    path = Path(save(make_dataset("holloway", rows=64, cols=48), tmp_path / "holloway.dcm"))
    up = uploads.read_upload(path, deid, cfg)
    assert not path.exists()  # deleted after reading
    assert up.kind == "dicom" and up.name == "holloway.dcm"
    shown = _header_text(up)
    leaked = [v for v in identifying_values("holloway") if v and v in shown]
    assert leaked == []
    assert "Patient Identity Removed | YES" in shown
    assert "(0029," not in shown  # private tags dropped
    assert deid.pseudonym("id:" + PATIENTS["holloway"]["PatientID"]) in shown
    assert "Rows | 64" in shown and "Window Center | 2048" in shown  # technical fields remain
    for img in (up.image, up.base):
        assert img.shape == (64, 48) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
    # the sliders start at the file's window: the full-range image through it is the model view
    windowed = uploads.apply_window(up.base, up.level, up.width)
    assert np.abs(windowed - up.image).max() < 2e-3
    # window 2048/4096 on 12 bits (0..4095): centre 2048/4095, the width capped at the range
    assert (up.level, up.width) == (pytest.approx(2048 / 4095), 1.0)


def test_monochrome1_window_starts_on_the_inverted_range(tmp_path: Path, cfg: dict,
                                                         deid) -> None:
    ds = make_dataset(photometric="MONOCHROME1", window=(1000, 1500))
    up = uploads.read_upload(save(ds, tmp_path / "m1.dcm"), deid, cfg)
    assert "inverted" in up.voi
    assert up.level == pytest.approx(1 - 1000 / 4095, abs=1e-6)
    assert up.width == pytest.approx(1500 / 4095, abs=1e-6)
    assert np.abs(uploads.apply_window(up.base, up.level, up.width) - up.image).max() < 2e-3


def test_the_app_key_is_its_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path / "cache"))
    path = uploads.app_key_file(None)
    assert path == tmp_path / "cache" / "app" / "app.key"
    assert path != default_key_file()
    on_file = {"uploads": {"key_file": "file"}}
    deid = uploads.app_deidentifier(on_file)
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600
    dataset_key = load_or_create_key(default_key_file())
    assert deid.key != dataset_key and deid.key == bytes.fromhex(path.read_text().strip())
    # uploading a patient's file gives a pseudonym that says nothing of the dataset's
    patient = "id:" + PATIENTS["holloway"]["PatientID"]
    assert deid.pseudonym(patient) != Deidentifier(dataset_key).pseudonym(patient)
    assert uploads.app_deidentifier(on_file).key == deid.key  # created once, then read
    with pytest.raises(ConfigError, match="dataset key"):
        uploads.app_key_file({"uploads": {"key_file": str(default_key_file())}})
    # or a key of the process, in memory only: a new one each time, no file
    session = [uploads.app_deidentifier({"uploads": {"key_file": "session"}}) for _ in "ab"]
    assert len({session[0].key, session[1].key, deid.key, dataset_key}) == 4
    # the default: the app's one key of this process (apps.common.session_key), given to it
    one = b"k" * 32
    assert uploads.app_deidentifier(None, one).key == one
    assert not (tmp_path / "session").exists()


# ---------------------------------------------------------------------------------------------
# refusals: one line each, naming the upload


def test_oversize_upload_is_refused_before_reading(tmp_path: Path, cfg: dict, deid) -> None:
    path = Path(save(make_dataset(rows=64, cols=64), tmp_path / "big.dcm"))
    small = {"uploads": {**cfg["uploads"], "max_bytes": 4000}}
    with pytest.raises(InputError) as e:
        uploads.read_upload(path, deid, small)
    assert "file too large" in _one_line_error(e, "big.dcm", tmp_path)
    assert not path.exists()  # deleted even when refused


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height, with a tiny (wrong) IDAT: a pixel bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(uploads.PNG_MAGIC + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [8000, 40000])  # over the app's cap; over Pillow's own guard
def test_png_pixel_bomb_is_refused_from_its_header(tmp_path: Path, cfg: dict, deid,
                                                   side: int) -> None:
    path = _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(InputError) as e:
        uploads.read_upload(path, deid, cfg)
    msg = _one_line_error(e, "bomb.png", tmp_path)
    assert "too large" in msg or "exceeds limit" in msg or "decompression bomb" in msg.lower()


def test_pixel_cap_is_configurable_and_applies_to_dicom(tmp_path: Path, cfg: dict,
                                                        deid) -> None:
    tight = {"uploads": {**cfg["uploads"], "max_pixels": 1000}}
    path = Path(save(make_dataset(rows=64, cols=48), tmp_path / "x.dcm"))
    with pytest.raises(InputError) as e:
        uploads.read_upload(path, deid, tight)
    assert "image too large" in _one_line_error(e, "x.dcm", tmp_path)
    assert uploads.upload_limits(None).max_pixels <= Image.MAX_IMAGE_PIXELS


def test_hostile_dicom_files_are_one_line_errors(tmp_path: Path, cfg: dict, deid) -> None:
    files = hostile_set(tmp_path / "bad")
    assert set(files) == set(HOSTILE)
    # the deflate bomb inflates to 8 MB: over a 4 MB cap (the app's default cap is 20 MB)
    capped = {"uploads": {**cfg["uploads"], "max_bytes": 4 << 20}}
    for name, path in files.items():
        with pytest.raises(InputError) as e:
            uploads.read_upload(path, deid, capped)
        _one_line_error(e, name, tmp_path)
        assert not path.exists(), name


@pytest.mark.parametrize("content, reason", [
    (b"GIF89a" + bytes(40), "not a DICOM, PNG or JPEG file"),
    (b"%PDF-1.7\n" + bytes(200), "not a DICOM, PNG or JPEG file"),
    (b"PatientName: DOE^JOHN\n", "not a DICOM, PNG or JPEG file"),
    (b"", "empty file"),
    (uploads.PNG_MAGIC + b"\0\0\0\rIHDR" + bytes(30), "cannot read"),  # a broken PNG
    (uploads.JPEG_MAGIC + b"\xe0" + bytes(100), "cannot read"),  # a broken JPEG
])
def test_corrupt_and_non_image_uploads(tmp_path: Path, cfg: dict, deid, content: bytes,
                                       reason: str) -> None:
    path = tmp_path / "upload.dcm"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        uploads.read_upload(path, deid, cfg)
    assert reason in _one_line_error(e, "upload.dcm", tmp_path)


def test_missing_upload(tmp_path: Path, cfg: dict, deid) -> None:
    with pytest.raises(InputError, match="missing"):
        uploads.read_upload(tmp_path / "gone.png", deid, cfg)


# ---------------------------------------------------------------------------------------------
# PNG and JPEG


def test_png_16_bit_keeps_no_metadata(tmp_path: Path, cfg: dict, deid) -> None:
    values = np.linspace(0, 65535, 40 * 30).reshape(40, 30).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "HOLLOWAY^MARGARET MRN00482913")
    path = tmp_path / "film.png"
    Image.fromarray(values).save(path, pnginfo=info)
    up = uploads.read_upload(path, deid, cfg)
    assert up.kind == "png" and up.image.shape == (40, 30)
    assert np.allclose(up.image, values / 65535.0, atol=1e-6)
    assert "HOLLOWAY" not in _header_text(up) and "MRN" not in _header_text(up)
    assert (up.level, up.width) == (0.5, 1.0)
    assert not path.exists()


def test_the_kind_comes_from_the_content_not_the_name(tmp_path: Path, cfg: dict,
                                                      deid) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "really_a_jpeg.dcm"
    Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(path, format="JPEG")
    up = uploads.read_upload(path, deid, cfg, delete=False)
    assert up.kind == "jpeg" and up.image.shape == (48, 64) and path.exists()


def test_large_images_are_shrunk_for_display(tmp_path: Path, cfg: dict, deid) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((300, 600), 128, np.uint8)).save(path)
    small = {"uploads": {**cfg["uploads"], "display_max": 200}}
    up = uploads.read_upload(path, deid, small)
    assert up.image.shape == (100, 200)


# ---------------------------------------------------------------------------------------------
# JPEG 2000 with the installed Pillow (installing gradio moved Pillow once: it must still work)


def test_jpeg2000_dicom_decodes_with_the_installed_pillow(tmp_path: Path, cfg: dict,
                                                          deid) -> None:
    import PIL
    from PIL import features
    from pydicom.pixels.decoders.base import get_decoder

    assert features.check("jpg_2000"), f"Pillow {PIL.__version__} has no JPEG 2000 codec"
    plain = make_dataset(rows=128, cols=96)
    expected = uploads.read_upload(save(plain, tmp_path / "plain.dcm"), deid, cfg).image
    ds = make_dataset(rows=128, cols=96)
    ds.compress(dcm_uid.JPEG2000Lossless)
    decoder = get_decoder(dcm_uid.JPEG2000Lossless)
    assert "pillow" in decoder.available_plugins
    arr, _ = decoder.as_array(ds, decoding_plugin="pillow")  # Pillow itself, not pylibjpeg
    assert np.array_equal(arr, plain.pixel_array)
    up = uploads.read_upload(save(ds, tmp_path / "j2k.dcm"), deid, cfg)
    assert np.array_equal(up.image, expected)  # lossless: the same image as the plain file


@pytest.mark.data
@pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                    reason="run `biomed data fetch chest_dicom` first")
def test_rg1_jpeg2000_reads_as_its_uncompressed_twin(cfg: dict, deid) -> None:
    full = {"uploads": {**cfg["uploads"], "display_max": 2048}}  # no shrinking: exact compare
    j2k = uploads.read_upload(sources.path("chest_dicom", "RG1_J2KI.dcm"), deid, full,
                              delete=False)
    unc = uploads.read_upload(sources.path("chest_dicom", "RG1_UNCI.dcm"), deid, full,
                              delete=False)
    assert j2k.image.shape == (1955, 1841) and np.array_equal(j2k.image, unc.image)
    assert "CompressedSamples" not in _header_text(j2k) and "9RG1" not in _header_text(j2k)
    assert sources.path("chest_dicom", "RG1_J2KI.dcm").is_file()  # the example is never deleted


def test_one_upload_limit_by_default_the_servers_max_file_size() -> None:
    assert uploads.parse_size("512kb") == 512 * 1024 and uploads.parse_size(7) == 7
    assert uploads.upload_limits({"max_file_size": "5mb"}).max_file_bytes == 5 * 2**20
    assert uploads.upload_limits(None).max_file_bytes == 20 * 2**20  # conf/app.yaml's 20mb
    own = {"max_file_size": "5mb", "uploads": {"max_bytes": 1000}}
    assert uploads.upload_limits(own).max_file_bytes == 1000  # set apart on purpose
    with pytest.raises(ConfigError, match="max_file_size='lots'"):
        uploads.upload_limits({"max_file_size": "lots"})


def test_an_upload_is_deleted_after_a_grace_period(tmp_path: Path, cfg: dict, deid) -> None:
    """gradio keeps one file per content: two users uploading the same DICOM share its path,
    so it is deleted ``delete_after_s`` after reading, not at once."""
    import time

    path = save(make_dataset(), tmp_path / "shared.dcm")
    later = {"uploads": {**cfg["uploads"], "delete_after_s": 0.3}}
    uploads.read_upload(path, deid, later)
    assert Path(path).exists()  # a second reader of the same upload still finds it
    uploads.read_upload(path, deid, later)
    time.sleep(1.0)
    assert not Path(path).exists()


@pytest.mark.parametrize("shape, reason", [((1, 1), "too small"), ((8, 8), "too small"),
                                           ((40, 400), "too elongated")])
def test_images_that_cannot_be_radiographs_are_refused(tmp_path: Path, cfg: dict, deid, shape,
                                                        reason) -> None:
    from PIL import Image

    path = tmp_path / "odd.png"
    Image.fromarray(np.full(shape, 128, np.uint8)).save(path)
    with pytest.raises(InputError, match=reason):
        uploads.read_upload(path, deid, cfg)
