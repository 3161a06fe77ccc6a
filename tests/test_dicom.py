"""Reading DICOM: the RG1 reference radiograph, the display pipeline, every bad-input case, and
synthetic images written as DICOM and read back.

Realistic DICOM files come from `tests.helpers.dicom.make_dataset`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence

from biomed import sources
from biomed.errors import ConfigError, InputError
from biomed.imaging.dicom import read as dicom
from biomed.imaging.dicom import voi
from biomed.imaging.dicom.read import ReadOptions, read_dicom
from biomed.imaging.dicom.write import prompt_hash, synthetic_dataset, write_synthetic_dicom
from tests.helpers.dicom import make_dataset, save, truncated_j2k

# ---------------------------------------------------------------------------------------------
# the real radiograph (RG1)

needs_rg1 = pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                               reason="run `biomed data fetch chest_dicom` first")


def _stored(name: str) -> np.ndarray:
    return pydicom.dcmread(sources.path("chest_dicom", name)).pixel_array


@pytest.fixture(scope="module")
def rg1():
    return {n: read_dicom(sources.path("chest_dicom", f"RG1_{n}.dcm"))
            for n in ("UNCI", "UNCR", "J2KI", "J2KR")}


@pytest.mark.data
@needs_rg1
def test_rg1_jpeg2000_decodes_bit_identical_to_uncompressed(rg1):
    assert np.array_equal(_stored("RG1_J2KI.dcm"), _stored("RG1_UNCI.dcm"))  # lossy's copy
    assert np.array_equal(_stored("RG1_J2KR.dcm"), _stored("RG1_UNCR.dcm"))  # lossless
    assert np.array_equal(rg1["J2KI"].image, rg1["UNCI"].image)
    assert np.array_equal(rg1["J2KR"].image, rg1["UNCR"].image)


@pytest.mark.data
@needs_rg1
def test_rg1_lossy_and_lossless_agree_within_tolerance(rg1):
    diff = np.abs(_stored("RG1_UNCI.dcm").astype(int) - _stored("RG1_UNCR.dcm").astype(int))
    assert diff.max() <= 403 and 40 < diff.mean() < 60  # the DESIGN's facts: up to 403, mean 50
    img_diff = np.abs(rg1["UNCI"].image - rg1["UNCR"].image)
    assert img_diff.max() <= 404 / 29999 and img_diff.mean() < 0.002  # window width 30000


@pytest.mark.data
@needs_rg1
def test_rg1_metadata_and_display_pipeline(rg1):
    meta = rg1["J2KR"].meta
    assert (meta.modality, meta.view_position, meta.photometric) == ("CR", "PA", "MONOCHROME1")
    assert (meta.bits_stored, meta.bits_allocated, meta.rows, meta.columns) == (15, 16, 1955,
                                                                                 1841)
    assert meta.pixel_spacing is None and meta.spacing_source is None  # [0,0] means unknown
    assert meta.voi == "window 15000/30000 LINEAR, inverted (MONOCHROME1)"
    assert meta.transfer_syntax == "JPEG 2000 Image Compression (Lossless Only)"
    assert not meta.lossy and rg1["J2KI"].meta.lossy and rg1["UNCI"].meta.lossy
    img = rg1["UNCR"].image
    assert img.dtype == np.float32 and img.shape == (1955, 1841)
    assert img.min() >= 0.0 and img.max() <= 1.0
    # MONOCHROME1 inverted: lungs dark, mediastinum and spine bright
    lung_right = img[500:1100, 300:650].mean()   # the patient's right lung, image left
    lung_left = img[500:1100, 1200:1550].mean()
    mediastinum = img[500:1300, 850:1000].mean()
    assert max(lung_right, lung_left) + 0.1 < mediastinum
    # full range scales by Bits Stored (0..32767), not by the 16-bit container
    full = read_dicom(sources.path("chest_dicom", "RG1_UNCR.dcm"), ReadOptions(voi="full"))
    raw = _stored("RG1_UNCR.dcm")
    assert np.allclose(full.image, 1.0 - raw / 32767.0, atol=1e-6)


@pytest.mark.data
@needs_rg1
def test_rg1_reduced_resolution_jpeg2000(rg1):
    """decode_size lets JPEG 2000 stop at a coarser wavelet level (1841 columns: one level,
    since Pillow rounds 1841/4 differently from the codestream)."""
    red = read_dicom(sources.path("chest_dicom", "RG1_J2KR.dcm"), ReadOptions(decode_size=512))
    assert red.image.shape == (978, 921) and red.meta.rows == 1955
    full = rg1["J2KR"].image
    box = full[:1954, :1840].reshape(977, 2, 920, 2).mean(axis=(1, 3))
    assert np.abs(red.image[:977, :920] - box).mean() < 0.01


# ---------------------------------------------------------------------------------------------
# the display pipeline on synthetic values


def _ramp(bits: int, signed: bool = False) -> np.ndarray:
    lo, hi = voi.stored_range(bits, signed)
    return np.linspace(lo, hi, 64 * 48).round().reshape(64, 48)


def test_window_linear_follows_ps3_3_formula():
    ds = make_dataset(pixels=_ramp(12), window=(1000, 401))
    out = dicom.dataset_to_image(ds).image
    x = _ramp(12)
    expected = np.clip((x - 999.5) / 400 + 0.5, 0, 1)
    assert np.allclose(out, expected, atol=1e-6)


def test_monochrome1_is_inverted_and_full_range_uses_bits_stored():
    ds = make_dataset(pixels=_ramp(12), photometric="MONOCHROME1", window=None)
    out = dicom.dataset_to_image(ds)
    assert out.meta.voi == "full range (no window in the file), inverted (MONOCHROME1)"
    assert np.allclose(out.image, 1 - _ramp(12) / 4095, atol=1e-6)
    assert out.image.max() == 1.0  # 12 bits in 16: 4095 is the top, not 65535


def test_rescale_signed_minmax_and_other_voi_functions():
    x = _ramp(12, signed=True)
    ds = make_dataset(pixels=x, signed=True, window=(0, 1000))
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    m = x * 2 - 100
    assert np.allclose(dicom.dataset_to_image(ds).image,
                       np.clip((m + 0.5) / 999 + 0.5, 0, 1), atol=1e-6)
    ds.VOILUTFunction = "LINEAR_EXACT"
    assert np.allclose(dicom.dataset_to_image(ds).image, np.clip(m / 1000 + 0.5, 0, 1),
                       atol=1e-6)
    ds.VOILUTFunction = "SIGMOID"
    assert np.allclose(dicom.dataset_to_image(ds).image, 1 / (1 + np.exp(-4 * m / 1000)),
                       atol=1e-6)
    full = dicom.dataset_to_image(ds, options=ReadOptions(voi="full")).image
    assert np.allclose(full, (m - (-2048 * 2 - 100)) / (4095 * 2), atol=1e-6)
    ds2 = make_dataset(pixels=np.array([[100, 200], [300, 400]]), window=None)
    assert np.allclose(dicom.dataset_to_image(ds2, options=ReadOptions(voi="minmax")).image,
                       [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)


def test_voi_lut_sequence_is_preferred_to_the_window():
    ds = make_dataset(pixels=np.array([[0, 5], [10, 4095]]), window=(2048, 4096))
    item = Dataset()
    item.LUTDescriptor = [8, 2, 8]  # 8 entries, first mapped value 2, 8 bits
    item.LUTData = [0, 10, 20, 40, 80, 160, 200, 255]
    ds.VOILUTSequence = Sequence([item])
    out = dicom.dataset_to_image(ds)
    assert out.meta.voi == "VOI LUT"
    assert np.allclose(out.image, np.array([[0, 40], [255, 255]]) / 255, atol=1e-6)


def test_pixel_spacing_zero_or_missing_is_unknown():
    meta = dicom.metadata(make_dataset(spacing=["0", "0"]))
    assert (meta.pixel_spacing, meta.spacing_source) == ((0.139, 0.139), "ImagerPixelSpacing")
    ds = make_dataset(spacing=["0", "0"])
    del ds.ImagerPixelSpacing
    assert dicom.metadata(ds).pixel_spacing is None
    del ds.PixelSpacing
    assert dicom.metadata(ds).pixel_spacing is None
    ds.PixelSpacing = ["0.15", "0.148"]
    assert dicom.metadata(ds).pixel_spacing == (0.15, 0.148)
    ds.PixelSpacing = ["-1", "0.1"]
    assert dicom.metadata(ds).pixel_spacing is None
    assert dicom.metadata(ds).to_dict()["pixel_spacing"] == ""


def test_bits_above_bits_stored_are_ignored(tmp_path):
    """PS3.5 8.1.1: old files keep overlays in the unused high bits."""
    ds = make_dataset(pixels=np.array([[0xF000 | 4095, 0x1000]]), window=None)
    out = read_dicom(save(ds, tmp_path / "a.dcm")).image
    assert np.allclose(out, [[1.0, 0.0]])


@pytest.mark.parametrize("syntax", [dcm_uid.RLELossless, dcm_uid.JPEG2000Lossless,
                                    dcm_uid.DeflatedExplicitVRLittleEndian,
                                    dcm_uid.ImplicitVRLittleEndian])
def test_compressed_syntaxes_decode_to_the_same_image(tmp_path, syntax):
    native = make_dataset(rows=40, cols=32, photometric="MONOCHROME1")
    ds = make_dataset(rows=40, cols=32, photometric="MONOCHROME1")
    if dcm_uid.UID(syntax).is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    out = read_dicom(save(ds, tmp_path / "c.dcm"))
    assert np.array_equal(out.image, dicom.dataset_to_image(native).image)


def test_j2k_reduced_decode_matches_a_box_downsample(tmp_path):
    ds = make_dataset(rows=256, cols=192, bits_stored=12)
    full = dicom.dataset_to_image(ds).image
    ds.compress(dcm_uid.JPEG2000Lossless)
    path = save(ds, tmp_path / "j.dcm")
    red = read_dicom(path, ReadOptions(decode_size=60))
    assert red.image.shape == (64, 48) and red.meta.image_shape == (64, 48)
    box = full.reshape(64, 4, 48, 4).mean(axis=(1, 3))
    diff = np.abs(red.image - box)  # the 5/3 wavelet's low band differs from a box at edges
    assert np.median(diff) < 0.005 and diff.mean() < 0.05
    assert read_dicom(path, ReadOptions(decode_size=200)).image.shape == (256, 192)
    # (rows, columns): each side at least that (one level gives 128x96)
    assert read_dicom(path, ReadOptions(decode_size=(100, 90))).image.shape == (128, 96)
    assert read_dicom(path, ReadOptions(decode_size=(60, 100))).image.shape == (256, 192)


def test_bare_dataset_without_preamble_is_read(tmp_path):
    bare = Dataset()
    bare.update(make_dataset())
    path = tmp_path / "bare.dcm"
    bare.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert path.read_bytes()[128:132] != b"DICM"
    out = read_dicom(path)
    assert np.array_equal(out.image, dicom.dataset_to_image(make_dataset()).image)


# ---------------------------------------------------------------------------------------------
# bad input: a one-line typed error naming the file and the reason


def _error(path, options=None) -> str:
    with pytest.raises(InputError) as info:
        read_dicom(path, options)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


def test_not_dicom_empty_and_missing(tmp_path):
    (tmp_path / "note.txt").write_text("Patient notes\n" * 20)
    assert "not a DICOM file (no 'DICM' marker at byte 128" in _error(tmp_path / "note.txt")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert _error(tmp_path / "empty.dcm").endswith(": empty file (0 bytes)")
    assert _error(tmp_path / "missing.dcm").endswith(": file not found")
    (tmp_path / "short.dcm").write_bytes(b"\0" * 64)
    assert "truncated file: 64 bytes" in _error(tmp_path / "short.dcm")


def test_truncated_header_and_truncated_pixel_data(tmp_path):
    data = tmp_path / "full.dcm"
    save(make_dataset(), data)
    raw = data.read_bytes()
    cut = tmp_path / "cut_header.dcm"
    for n in (300, 700, 1100):  # inside a value, inside an element header, ...
        cut.write_bytes(raw[:n])
        assert "truncated file" in _error(cut)
    cut.write_bytes(raw[:-1000])
    msg = _error(cut)
    assert "truncated file: Pixel Data declares 6144 bytes, the file holds 5144" in msg


def _silent_error(path) -> str:
    """The one-line error, with no warning let out on the way (pydicom's included)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _error(path)
    assert [str(w.message) for w in caught] == []
    return msg


def test_truncated_encapsulated_pixel_data_is_named_and_quiet(tmp_path):
    """pydicom returns an empty dataset (and warns) at end of file inside encapsulated pixels."""
    cut = truncated_j2k(tmp_path)
    with pytest.warns(UserWarning, match="End of file reached before delimiter"):
        assert len(pydicom.dcmread(cut)) == 0  # what made the old message wrong
    msg = _silent_error(cut)
    assert msg == (f"{cut}: truncated encapsulated Pixel Data: the file ends inside the "
                   "compressed pixel data, before its sequence delimiter (the header is intact)")
    # the header alone still reads (inspect --header-only)
    assert dicom.read_dataset(cut, stop_before_pixels=True).Rows == 128


@pytest.mark.data
@needs_rg1
def test_truncated_rg1_jpeg2000_is_named_and_quiet(tmp_path):
    raw = sources.path("chest_dicom", "RG1_J2KI.dcm").read_bytes()
    cut = tmp_path / "RG1_J2KI_cut.dcm"
    cut.write_bytes(raw[:300_000])
    assert "truncated encapsulated Pixel Data" in _silent_error(cut)


def test_no_pixel_data(tmp_path):
    ds = make_dataset()
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = dcm_uid.BasicTextSRStorage
    msg = _error(save(ds, tmp_path / "sr.dcm"))
    assert msg.endswith("no pixel data (no (7FE0,0010) element; Basic Text SR Storage; the "
                        "header describes an image, so the file may be truncated)")
    for kw in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        delattr(ds, kw)
    assert _error(save(ds, tmp_path / "sr.dcm")).endswith(
        "no pixel data (no (7FE0,0010) element; Basic Text SR Storage)")


def test_pixel_data_shorter_than_the_header_says(tmp_path):
    ds = make_dataset(rows=64, cols=48)
    ds.Rows = 80  # header claims more rows than the data holds
    msg = _error(save(ds, tmp_path / "short.dcm"))
    assert "pixel data is 6144 bytes, shorter than the 7680 the header says (80x48" in msg


def test_unknown_and_unsupported_transfer_syntaxes(tmp_path):
    path = save(make_dataset(), tmp_path / "u.dcm")
    with open(path, "rb") as f:
        raw = f.read()
    explicit = dcm_uid.ExplicitVRLittleEndian.encode() + b"\0"
    assert raw.count(explicit) == 1
    with open(path, "wb") as f:  # a syntax pydicom cannot even write
        f.write(raw.replace(explicit, b"1.2.840.10008.1.2.99"))
    assert _error(path).endswith("unknown transfer syntax 1.2.840.10008.1.2.99")
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = dcm_uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    msg = _error(save(ds, tmp_path / "mpeg.dcm"))
    assert msg.endswith("unsupported transfer syntax MPEG2 Main Profile / Main Level "
                        "(1.2.840.10008.1.2.4.100): no decoder exists for it")


def test_syntax_without_an_installed_decoder_names_it(tmp_path, monkeypatch):
    """As if neither pylibjpeg-libjpeg nor pyjpegls were installed."""
    from pydicom.pixels.decoders.base import Decoder

    ds = make_dataset(rows=16, cols=16)
    ds.file_meta.TransferSyntaxUID = dcm_uid.JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\0" * 62])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "jls.dcm")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    msg = _error(path)
    assert "transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) has " \
        "no installed decoder (" in msg and "pyjpegls" in msg


def test_undecodable_pixel_data(tmp_path):
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = dcm_uid.JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x07" * 200])
    ds["PixelData"].VR = "OB"
    msg = _error(save(ds, tmp_path / "bad.dcm"))
    assert "cannot decode JPEG 2000 Image Compression (Lossless Only) pixel data" in msg


def _rgb_dataset() -> FileDataset:
    ds = make_dataset(rows=8, cols=6, window=None)
    rgb = np.zeros((8, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rgb.tobytes()
    return ds


def test_colour_is_refused_or_converted_and_says_which(tmp_path):
    path = save(_rgb_dataset(), tmp_path / "rgb.dcm")
    msg = _error(path)
    assert "colour image (RGB, 3 samples per pixel) refused: grayscale required" in msg
    out = read_dicom(path, ReadOptions(color="convert"))
    assert out.meta.color_converted and "converted from RGB to luma" in out.notes[0]
    assert np.allclose(out.image, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1e-6)


def test_multi_frame_is_refused_unless_a_frame_is_chosen(tmp_path):
    frames = np.stack([np.full((8, 6), v, np.uint16) for v in (0, 1000, 4095)])
    ds = make_dataset(rows=8, cols=6, window=None)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<u2").tobytes()
    path = save(ds, tmp_path / "mf.dcm")
    assert "multi-frame image (3 frames) refused: a radiograph is one frame; choose one with " \
        "frame=K / --frame K" in _error(path)
    out = read_dicom(path, ReadOptions(frame=1))
    assert out.meta.frame == 1 and out.meta.frames == 3 and "frame 1 of 3" in out.notes
    assert np.allclose(out.image, 1000 / 4095)
    assert "frame 3 requested but the image has 3 frames" in _error(path, ReadOptions(frame=3))


def test_frame_applies_to_multi_frame_images_only(tmp_path):
    """One --frame setting reads a folder that mixes single- and multi-frame files."""
    path = save(make_dataset(), tmp_path / "single.dcm")
    plain = read_dicom(path)
    for k in (0, 1, 5):
        out = read_dicom(path, ReadOptions(frame=k))
        assert np.array_equal(out.image, plain.image)
        assert out.meta.frame is None and out.meta.frames == 1 and out.notes == ()


def test_inconsistent_pixel_description(tmp_path):
    ds = make_dataset()
    ds.BitsStored = 20
    assert "invalid bit depth: Bits Allocated 16, Bits Stored 20" in _error(
        save(ds, tmp_path / "b.dcm"))


# ---------------------------------------------------------------------------------------------
# synthetic images written as DICOM


def test_synthetic_dicom_is_marked_and_reads_back_with_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((40, 30)).astype(np.float32)
    img[0, 0], img[0, 1] = 0.0, 1.0
    path = write_synthetic_dicom(tmp_path / "s.dcm", img, model_id="roentgen-tiny",
                                 prompt="Small left pleural effusion.", salt=SALT, seed=7,
                                 steps=20, guidance=4.0)
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.BurnedInAnnotation == "NO"
    assert "model roentgen-tiny" in ds.DerivationDescription
    assert prompt_hash("Small left pleural effusion.", SALT) in ds.DerivationDescription
    assert "effusion" not in ds.DerivationDescription  # the hash, never the prompt
    other = synthetic_dataset(img, model_id="m", prompt="p", salt=SALT)
    assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                other.StudyInstanceUID, other.SOPInstanceUID}) == 5  # new UIDs every time
    back = read_dicom(path)
    assert back.meta.photometric == "MONOCHROME2" and back.meta.bits_stored == 16
    from biomed.imaging.core.pixels import to_uint16

    assert np.array_equal(to_uint16(back.image), to_uint16(img))
    assert np.abs(back.image - img).max() <= 0.5 / 65535 + 1e-7


def test_values_beyond_bits_stored_are_read_wider_and_said():
    """A codestream more precise than the header's Bits Stored: trusted, and noted."""
    ds = make_dataset(pixels=np.array([[0, 4095]]), window=None)
    image, desc = voi.gray_to_float(ds, np.array([[0, 8191]], np.uint16), 12, False, "full")
    assert np.allclose(image, [[0, 1]]) and desc.endswith("values exceed Bits Stored: read as "
                                                          "13 bits")


# ---------------------------------------------------------------------------------------------
# the prompt in a synthetic image's provenance

SALT = bytes(range(100, 132))
TEMPLATES = ["Small left pleural effusion.", "Small right pleural effusion.", "Cardiomegaly.",
             "No acute cardiopulmonary process."]


def test_the_dicom_prompt_hash_is_salted_and_cannot_be_guessed_back():
    """A plain sha256 of a short templated prompt is found again by hashing the templates; the
    hash recorded is keyed with a secret salt instead."""
    import hashlib

    img = np.zeros((8, 8), np.float32)
    ds = synthetic_dataset(img, model_id="m", prompt=TEMPLATES[0], salt=SALT)
    for guess in TEMPLATES:  # the attack on an unsalted hash
        assert hashlib.sha256(guess.encode()).hexdigest() not in ds.DerivationDescription
    assert ds.DerivationDescription.count("hmac-sha256:") == 1
    other = synthetic_dataset(img, model_id="m", prompt=TEMPLATES[0], salt=bytes(32))
    assert prompt_hash(TEMPLATES[0], SALT) != prompt_hash(TEMPLATES[0], bytes(32))
    assert prompt_hash(TEMPLATES[0], SALT) in ds.DerivationDescription
    assert prompt_hash(TEMPLATES[0], bytes(32)) in other.DerivationDescription
    for salt in (None, b"", b"short"):
        with pytest.raises(ConfigError, match="secret salt"):
            synthetic_dataset(img, model_id="m", prompt=TEMPLATES[0], salt=salt)


def test_prompt_policy_text_or_a_salted_hash():
    from biomed.imaging.dicom.write import dataset_prompt_policy, prompt_provenance

    assert prompt_provenance("Cardiomegaly.", "text") == {"prompt_policy": "text",
                                                          "prompt": "Cardiomegaly."}
    hashed = prompt_provenance("Cardiomegaly.", "hash", SALT)
    assert hashed == {"prompt_policy": "hash", "prompt_hash": prompt_hash("Cardiomegaly.", SALT)}
    with pytest.raises(ConfigError, match="needs a secret salt"):
        prompt_provenance("Cardiomegaly.", "hash")
    with pytest.raises(ConfigError, match="prompt_policy='plain'"):
        prompt_provenance("Cardiomegaly.", "plain")

    class Restricted:
        prompt_policy = "hash"

    class Public:
        prompt_policy = "text"

    assert [dataset_prompt_policy(d) for d in (Restricted(), Public(), object())] == [
        "hash", "text", "hash"]  # a dataset that says nothing: hashed


def test_data_configs_declare_their_prompt_policy():
    """IU / OpenI report text is public (text); MIMIC-CXR's may not be redistributed (hash)."""
    from biomed.config import compose

    want = {"phantom_iu": "text", "openi": "text", "mimic_cxr_jpg": "hash", "padchest": "hash",
            "chexpert": "hash", "nih14": "hash", "folder_csv": "hash"}
    for name, policy in want.items():
        cfg = compose("train_classifier", [f"data={name}"])
        assert cfg.data.prompt_policy == policy, name
