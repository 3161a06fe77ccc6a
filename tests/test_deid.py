"""De-identification: PS3.15 Annex E Basic Profile, UID remapping, date shifts, private tags,
the marks it leaves, burned-in annotation, and the key."""

from __future__ import annotations

import copy
import datetime as dt
import io
import stat
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from biomed import sources
from biomed.errors import ConfigError, InputError
from biomed.imaging.dicom import read as dicom
from biomed.imaging.dicom.burned_in import burned_in_reason
from biomed.imaging.dicom.deid import (
    FREE_TEXT_ACTIONS,
    BurnedInAnnotation,
    DeidConfig,
    Deidentifier,
    code_meaning,
    load_or_create_key,
    new_session_key,
)
from tests.helpers.dicom import STUDY_DATE, free_text, identifying_values, make_dataset, save

KEY = bytes(range(32))


def _all_values(ds: Dataset) -> list[str]:
    """Every value in a dataset, its sequences and its file meta, as text."""
    out = []
    for elem in ds.iterall():
        if elem.VR == "SQ" or elem.tag == 0x7FE00010:
            continue
        out.append(str(elem.value))
    if getattr(ds, "file_meta", None):
        out += [str(e.value) for e in ds.file_meta.iterall()]
    return out


def _uids(ds: Dataset) -> set[str]:
    """The instance UIDs of a dataset (not the standard ones, not the implementation's)."""
    uids = {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value}
    uids.add(ds.file_meta.MediaStorageSOPInstanceUID)
    return {u for u in uids if u not in dcm_uid.UID_dictionary}


def test_no_identifying_value_survives_and_private_tags_are_dropped(tmp_path):
    ds = make_dataset()
    original_uids = _uids(ds)
    assert len(original_uids) == 5  # study, series, instance, frame of reference, referenced
    out = Deidentifier(KEY).deidentify(ds)
    text = "\n".join(_all_values(out))
    for value in [*identifying_values(), *original_uids, "BARTSPACS"]:
        assert value.lower() not in text.lower(), value
    assert not any(e.tag.is_private for e in out.iterall())
    for kw in ("RequestAttributesSequence", "SourceImageSequence", "ImageComments",
               "StudyDescription", "InstitutionName", "OtherPatientIDs", "PatientAddress",
               "OperatorsName", "DeviceSerialNumber", "InstanceCreationDate", *free_text()):
        assert kw not in out, kw
    # the bytes written to disk too
    with open(save(out, tmp_path / "d.dcm"), "rb") as f:
        raw = f.read()
    for value in [*identifying_values(), *original_uids]:
        assert value.encode() not in raw, value
    assert ds.PatientName == "HOLLOWAY^MARGARET^ROSALIND"  # the input is untouched


def test_code_meaning_is_rebuilt_from_the_code_never_copied(tmp_path):
    """Code Meaning is free text ("PA DOE^JOHN"): the kept coded items get theirs from the code."""
    ds = make_dataset()
    out = Deidentifier(KEY).deidentify(ds)
    view, region = out.ViewCodeSequence[0], out.AnatomicRegionSequence[0]
    assert (view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning) == (
        "R-10214", "SRT", "postero-anterior")
    assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (
        "T-D3000", "SRT", "Chest")
    # standard codes outside the table keep their code value as meaning; local schemes and
    # code values that are not codes are dropped; Coding Scheme Version is never copied
    items = []
    for scheme, value in (("SCT", "272479007"), ("SCT", "399348003"), ("SCT", "123456789"),
                          ("99BARTS", "HOLLOWAY"), ("SRT", "DOE^JOHN"), ("SCT", "PA DOE")):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = value, scheme
        item.CodeMeaning, item.CodingSchemeVersion = "PA DOE^JOHN", "DOE"
        items.append(item)
    ds.ViewCodeSequence = items
    out = Deidentifier(KEY).deidentify(ds)
    assert [(i.CodeValue, i.CodeMeaning) for i in out.ViewCodeSequence] == [
        ("272479007", "postero-anterior"), ("399348003", "antero-posterior"),
        ("123456789", "123456789")]
    assert all("CodingSchemeVersion" not in i for i in out.ViewCodeSequence)
    with open(save(out, tmp_path / "o.dcm"), "rb") as f:
        raw = f.read()
    for value in (b"DOE", b"HOLLOWAY", b"99BARTS"):
        assert value not in raw, value


def test_code_meanings_agree_with_the_dicom_code_dictionary():
    """The table's meanings are PS3.16's, as pydicom's SR code dictionary (built from it) has."""
    from biomed.imaging.dicom.deid import _CODE_MEANINGS

    concepts = pytest.importorskip("pydicom.sr._concepts_dict").concepts  # private: may move
    mapping = pytest.importorskip("pydicom.sr._snomed_dict").mapping

    meanings: dict[str, set[str]] = {}
    for entry in concepts["SCT"].values():
        for code, (meaning, _cids) in entry.items():
            meanings.setdefault(code, set()).add(meaning.lower())
    # PS3.16's older Code Meaning, which pydicom (newer SNOMED CT names) no longer carries
    legacy = {("SCT", "51185008"), ("SRT", "T-D3000"), ("SRT", "R-10214")}
    for (scheme, value), meaning in _CODE_MEANINGS.items():
        sct = value if scheme == "SCT" else mapping["SRT"].get(value)
        if (scheme, value) in legacy:
            continue
        assert meaning.lower() in meanings[sct], (scheme, value, meaning)
    assert code_meaning("SNM3", "R-10214") == "postero-anterior"


def test_free_text_is_removed_and_lut_types_keep_defined_terms_only(tmp_path):
    """PS3.15 Table E.1-1 removes descriptions and comments (X); explanations of windows and
    LUTs are free text too. LUT items keep the LUT; Rescale / Modality LUT Type a defined term."""
    ds = make_dataset()
    for kw in FREE_TEXT_ACTIONS:
        setattr(ds, kw, "HOLLOWAY")  # at most 8 characters: fits every text VR
    ds.RescaleType = "DR JONES"
    modality_lut, voi_lut = Dataset(), Dataset()
    for item, data in ((modality_lut, [0, 10, 20, 30]), (voi_lut, [0, 80, 160, 255])):
        item.add_new("LUTDescriptor", "US", [4, 0, 16])
        item.add_new("LUTData", "US", data)
    modality_lut.ModalityLUTType, modality_lut.LUTExplanation = "HOLLOWAY", "for HOLLOWAY"
    voi_lut.LUTExplanation, voi_lut.LUTLabel = "HOLLOWAY lungs", "HOLLOWAY"
    ds.ModalityLUTSequence, ds.VOILUTSequence = [modality_lut], [voi_lut]
    out = Deidentifier(KEY).deidentify(ds)
    for kw in FREE_TEXT_ACTIONS:
        assert kw not in out, kw
    assert out.RescaleType == "US" and out.ModalityLUTSequence[0].ModalityLUTType == "US"
    assert list(out.VOILUTSequence[0].LUTData) == [0, 80, 160, 255]
    assert "LUTExplanation" not in out.VOILUTSequence[0]
    assert "holloway" not in "\n".join(_all_values(out)).lower()
    with open(save(out, tmp_path / "o.dcm"), "rb") as f:
        raw = f.read().lower()
    for value in (b"holloway", b"jones"):
        assert value not in raw, value
    ds.RescaleType = "hu"
    assert Deidentifier(KEY).deidentify(ds).RescaleType == "HU"


def test_required_attributes_are_kept_as_dummies_and_marks_are_set():
    out = Deidentifier(KEY).deidentify(make_dataset())
    assert out.PatientIdentityRemoved == "YES"
    methods = list(out.DeidentificationMethod)
    assert methods[0].startswith("biomed PS3.15 Annex E Basic Profile")
    assert all(len(m) <= 64 for m in methods)  # LO
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]  # Basic Profile, Modified Dates option
    assert out.PatientID.startswith("BM") and out.PatientName == out.PatientID
    for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
               "StudyID"):
        assert kw in out and out[kw].value in ("", None), kw  # Type 2: present, empty
    assert "PatientAge" not in out and "PatientWeight" not in out
    # what the workbench needs survives
    assert (out.Modality, out.ViewPosition, out.BodyPartExamined) == ("DX", "PA", "CHEST")
    assert out.Manufacturer == "Carestream Health" and list(out.ImagerPixelSpacing) == [0.139,
                                                                                         0.139]
    assert out.SOPClassUID == dcm_uid.DigitalXRayImageStorageForPresentation
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_uids_are_remapped_consistently():
    a0, a1 = make_dataset(index=0), make_dataset(index=1)
    deid = Deidentifier(KEY)
    o0, o1 = deid.deidentify(a0), deid.deidentify(a1)
    assert o0.StudyInstanceUID == o1.StudyInstanceUID != a0.StudyInstanceUID  # same study
    assert o0.SOPInstanceUID != o1.SOPInstanceUID
    assert Deidentifier(KEY).deidentify(a0).SOPInstanceUID == o0.SOPInstanceUID  # across runs
    assert Deidentifier(bytes(32)).deidentify(a0).SOPInstanceUID != o0.SOPInstanceUID
    for u in (o0.StudyInstanceUID, o0.SeriesInstanceUID, o0.SOPInstanceUID,
              o0.FrameOfReferenceUID):
        assert u.startswith("2.25.") and len(u) <= 64 and dcm_uid.UID(u).is_valid
    assert deid.uid(dcm_uid.CTImageStorage) == dcm_uid.CTImageStorage  # standard: kept
    other = deid.deidentify(make_dataset("przybylski"))
    assert other.PatientID != o0.PatientID and o1.PatientID == o0.PatientID


def test_dates_are_shifted_per_patient_keeping_intervals():
    a = make_dataset()
    a.SeriesDate = "20190316"  # two days after the study date
    deid = Deidentifier(KEY)
    out = deid.deidentify(a)
    days = deid.date_shift_days("id:MRN00482913")
    assert -3650 <= days <= -1
    shifted = dt.date(2019, 3, 14) + dt.timedelta(days=days)
    assert out.StudyDate == out.ContentDate == shifted.strftime("%Y%m%d") != STUDY_DATE
    assert out.SeriesDate == (shifted + dt.timedelta(days=2)).strftime("%Y%m%d")
    assert out.AcquisitionDateTime == shifted.strftime("%Y%m%d") + "101733.000000"
    assert out.StudyTime == "101502"  # times of day kept with shifted dates
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert deid.deidentify(make_dataset(index=3)).StudyDate == out.StudyDate  # same patient
    assert out.PatientBirthDate == ""


def test_dates_removed_with_the_basic_profile():
    out = Deidentifier(KEY, DeidConfig(dates="remove")).deidentify(make_dataset())
    assert out.StudyDate == "" and out.ContentDate == "" and out.StudyTime == ""  # Z
    for kw in ("SeriesDate", "AcquisitionDate", "AcquisitionDateTime", "SeriesTime"):
        assert kw not in out  # X
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]


def test_patient_characteristics_option():
    out = Deidentifier(KEY, DeidConfig(keep_patient_characteristics=True)).deidentify(
        make_dataset())
    assert (out.PatientSex, out.PatientAge) == ("F", "067Y")
    assert "113108" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_burned_in_annotation_is_kept_out_unless_allowed():
    ds = make_dataset(burned_in="YES")
    with pytest.raises(BurnedInAnnotation) as info:
        Deidentifier(KEY).deidentify(ds, "scan.dcm")
    assert isinstance(info.value, InputError)
    assert str(info.value) == ("scan.dcm: Burned In Annotation is YES (text in the pixels may "
                               "identify the patient): kept out; opt in with "
                               "--allow-burned-in / allow_burned_in=True")
    out = Deidentifier(KEY, DeidConfig(allow_burned_in=True)).deidentify(ds)
    assert out.BurnedInAnnotation == "YES"  # still flagged for whoever reads it


def test_deidentified_file_is_valid_dicom_with_the_same_pixels(tmp_path):
    for syntax in (dcm_uid.ExplicitVRLittleEndian, dcm_uid.RLELossless):
        ds = make_dataset(photometric="MONOCHROME1")
        if syntax != dcm_uid.ExplicitVRLittleEndian:
            ds.compress(syntax)
        path = save(Deidentifier(KEY).deidentify(ds), tmp_path / "o.dcm")
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(dicom.read_dicom(path).image, dicom.dataset_to_image(ds).image)
        assert "SourceApplicationEntityTitle" not in back.file_meta


def test_key_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "keys" / "deid.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not hex")
    with pytest.raises(InputError, match="not a de-identification key"):
        load_or_create_key(path)


def test_bad_key_paths_are_one_line_input_errors(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.key").write_bytes(bytes(range(256)))
    cases = {tmp_path: "not a de-identification key file (it is a folder or a device)",
             tmp_path / "afile" / "deid.key": f"cannot create the de-identification key file: "
                                              f"{tmp_path / 'afile'} is not a folder",
             tmp_path / "binary.key": "not a de-identification key (expected hex)"}
    for path, reason in cases.items():
        with pytest.raises(InputError) as info:
            load_or_create_key(path)
        assert str(info.value) == f"{path}: {reason}"


@pytest.mark.data
@pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                    reason="run `biomed data fetch chest_dicom` first")
def test_real_radiograph_is_deidentified(tmp_path):
    ds = dicom.read_dataset(sources.path("chest_dicom", "RG1_J2KI.dcm"))
    out = Deidentifier(KEY).deidentify(ds)
    with open(save(out, tmp_path / "rg1.dcm"), "rb") as f:
        raw = f.read()
    for value in ("CompressedSamples", "9RG1", "19400305", "Philips Medical Systems Hamburg",
                  "Our Department", "THORAVISION", "26210", "92.00.003", "exam Number",
                  "20040826", "19950926", "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457",
                  "1.3.6.1.4.1.5962.1.1.9.1.3.20040826185059.5457"):
        assert value.encode() not in raw, value
    assert np.array_equal(dicom.read_dicom(tmp_path / "rg1.dcm").image,
                          dicom.dataset_to_image(ds).image)


# ---------------------------------------------------------------------------------------------
# pixel data: re-encoded, so that nothing but the image survives

MARKER = b"DOE^JOHN"


def _with_app_and_comment(jpeg: bytes) -> bytes:
    """A JPEG with an APP1 segment and a COM segment naming the patient, after SOI."""
    app1 = b"\xff\xe1" + struct.pack(">H", len(MARKER) + 8) + b"Exif\0\0" + MARKER
    com = b"\xff\xfe" + struct.pack(">H", len(MARKER) + 2) + MARKER
    return jpeg[:2] + app1 + com + jpeg[2:]


def _j2k_with_comment(codestream: bytes) -> bytes:
    """A JPEG 2000 codestream with a COM marker segment (Latin-1 text) after SIZ."""
    lsiz = struct.unpack(">H", codestream[4:6])[0]
    com = b"\xff\x64" + struct.pack(">HH", len(MARKER) + 4, 1) + MARKER
    return codestream[:4 + lsiz] + com + codestream[4 + lsiz:]


def _encapsulated(ds: Dataset, syntax: str, frame: bytes) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _jpeg_dataset() -> tuple[Dataset, np.ndarray]:
    """An 8-bit JPEG baseline radiograph whose codestream carries APP1 and COM segments."""
    from PIL import Image

    pixels = (np.arange(64 * 48).reshape(64, 48) % 251).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    ds = make_dataset(bits_stored=8, pixels=pixels.astype(np.uint16), window=(128, 256))
    ds.BitsAllocated = 8
    ds = _encapsulated(ds, dcm_uid.JPEGBaseline8Bit, _with_app_and_comment(buf.getvalue()))
    return ds, dicom.dataset_to_image(ds).image


def _j2k_dataset() -> tuple[Dataset, np.ndarray]:
    from pydicom.encaps import generate_frames

    ds = make_dataset(rows=128, cols=96)
    ds.compress(dcm_uid.JPEG2000Lossless, generate_instance_uid=False)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds = _encapsulated(ds, dcm_uid.JPEG2000Lossless, _j2k_with_comment(frame))
    return ds, dicom.dataset_to_image(ds).image


def test_native_pixel_data_loses_high_bits_and_trailing_bytes(tmp_path):
    """An overlay in the bits above Bits Stored and a name after the image are left behind."""
    stored = make_dataset().pixel_array.copy()  # 12 bits stored in 16
    overlay = stored | np.uint16(0x8000)  # an old overlay plane in bit 15
    ds = make_dataset(pixels=overlay)
    ds.PixelData = ds.PixelData + MARKER  # appended by an export tool
    out = Deidentifier(KEY).deidentify(ds)
    assert out.file_meta.TransferSyntaxUID == dcm_uid.ExplicitVRLittleEndian
    assert len(out.PixelData) == stored.size * 2 and MARKER not in out.PixelData
    assert np.array_equal(np.frombuffer(out.PixelData, "<u2").reshape(stored.shape), stored)
    assert MARKER not in Path(save(out, tmp_path / "o.dcm")).read_bytes()
    assert np.array_equal(dicom.read_dicom(tmp_path / "o.dcm").image,
                          dicom.dataset_to_image(make_dataset()).image)


@pytest.mark.parametrize("build", [_jpeg_dataset, _j2k_dataset], ids=["jpeg_app_com", "j2k_com"])
def test_compressed_pixel_data_is_reencoded_without_its_segments(tmp_path, build):
    ds, image = build()
    assert MARKER in ds.PixelData
    out = Deidentifier(KEY).deidentify(ds)
    assert out.file_meta.TransferSyntaxUID == dcm_uid.RLELossless
    assert MARKER not in Path(save(out, tmp_path / "o.dcm")).read_bytes()
    assert np.array_equal(dicom.read_dicom(tmp_path / "o.dcm").image, image)  # lossless


def test_ingest_as_dicom_writes_the_reencoded_image_only(tmp_path):
    from biomed.imaging.dicom.ingest import IngestSettings, ingest

    src = tmp_path / "src"
    ds = make_dataset(pixels=make_dataset().pixel_array | np.uint16(0x8000))
    ds.PixelData = ds.PixelData + MARKER
    save(ds, src / "a.dcm")
    j2k, _ = _j2k_dataset()
    save(j2k, src / "b.dcm")
    summary = ingest(src, tmp_path / "out", IngestSettings(format="dicom"), workers=1,
                     key_file=tmp_path / "deid.key", progress=False)
    assert summary.written == 2
    written = sorted((tmp_path / "out" / "images").glob("*.dcm"))
    assert len(written) == 2
    for path in written:
        assert MARKER not in path.read_bytes()
        assert MARKER not in pydicom.dcmread(path).pixel_array.tobytes()


def test_pixels_copy_keeps_the_bytes_for_decode_only_callers():
    ds = make_dataset()
    ds.PixelData = ds.PixelData + MARKER
    out = Deidentifier(KEY).deidentify(ds, pixels="copy")
    assert out.PixelData == ds.PixelData  # only for callers that write the decoded image alone
    with pytest.raises(ConfigError, match="pixels must be"):
        Deidentifier(KEY).deidentify(ds, pixels="raw")


# ---------------------------------------------------------------------------------------------
# burned-in annotation


def _captured(**attrs) -> Dataset:
    ds = make_dataset(burned_in=None)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


REFUSED = {
    "secondary capture, missing": dict(SOPClassUID=dcm_uid.SecondaryCaptureImageStorage),
    "multi-frame sc, missing": dict(
        SOPClassUID=dcm_uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage),
    "modality OT, missing": dict(Modality="OT"),
    "modality US, missing": dict(Modality="US"),
    "modality SC, missing": dict(Modality="SC"),
    "image type secondary, missing": dict(ImageType=["DERIVED", "SECONDARY"]),
    "secondary capture, empty": dict(SOPClassUID=dcm_uid.SecondaryCaptureImageStorage,
                                     BurnedInAnnotation=""),
    "dx, YES and NO": dict(BurnedInAnnotation=["YES", "NO"]),
    "dx, garbage": dict(BurnedInAnnotation="UNKNOWN"),
    "dx, features YES": dict(BurnedInAnnotation="NO", RecognizableVisualFeatures="YES"),
    "dx, features NO and YES": dict(RecognizableVisualFeatures=["NO", "YES"]),
}
ACCEPTED = {
    "dx, missing": {},
    "dx, NO": dict(BurnedInAnnotation="NO"),
    "secondary capture, NO": dict(SOPClassUID=dcm_uid.SecondaryCaptureImageStorage,
                                  BurnedInAnnotation="NO", Modality="OT",
                                  ImageType=["DERIVED", "SECONDARY"],
                                  RecognizableVisualFeatures="NO"),
    "lower case no": dict(Modality="US", BurnedInAnnotation="no"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_images_that_may_show_the_patient_are_refused_unless_allowed(case):
    ds = _captured(**REFUSED[case])
    with pytest.raises(BurnedInAnnotation) as info:
        Deidentifier(KEY).deidentify(ds, "scan.dcm")
    assert str(info.value).startswith("scan.dcm: ") and "\n" not in str(info.value)
    assert str(info.value).endswith("kept out; opt in with --allow-burned-in / "
                                    "allow_burned_in=True")
    assert burned_in_reason(ds) is not None
    Deidentifier(KEY, DeidConfig(allow_burned_in=True)).deidentify(ds)  # opted in


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_images_said_clean_or_primary_pass(case):
    assert burned_in_reason(_captured(**ACCEPTED[case])) is None
    Deidentifier(KEY).deidentify(_captured(**ACCEPTED[case]))


def test_loaders_refuse_the_same_images_per_file(tmp_path):
    """Training reads DICOM through `read_xray`: the same refusal, one InputError per file,
    which the image cache records and skips."""
    from biomed.imaging.data.image_cache import ImageCache
    from biomed.imaging.data.read import read_xray

    good = save(make_dataset(), tmp_path / "good.dcm")
    screen = save(_captured(Modality="OT"), tmp_path / "screen.dcm")
    flagged = save(make_dataset(burned_in="YES"), tmp_path / "flagged.dcm")
    for path in (screen, flagged):
        with pytest.raises(BurnedInAnnotation, match=f"^{path}: Burned In Annotation is"):
            read_xray(path)
        assert read_xray(path, allow_burned_in=True).shape == (64, 48)
    res = ImageCache(tmp_path / "cache", 16).build([good, screen, flagged], read_xray,
                                                   progress=False)
    assert res.slots[0] is not None and res.slots[1] is None and res.slots[2] is None
    assert "Burned In Annotation is missing on Modality OT" in res.bad[screen]
    assert "Burned In Annotation is YES" in res.bad[flagged]


# ---------------------------------------------------------------------------------------------
# the key, Table E.1-1 details, and the input left alone


def test_the_key_is_the_callers_and_sessions_get_their_own():
    from biomed.imaging.dicom import deid as deid_module
    from biomed.imaging.dicom import keys

    with pytest.raises(TypeError):
        Deidentifier()  # no hidden default key
    for bad in (b"", b"short", "a text key of 32 characters....", None):
        with pytest.raises(ConfigError, match="a de-identification key is 16 or more bytes"):
            Deidentifier(bad)
    for module in (deid_module, keys):  # no key held by a module
        assert not [k for k, v in vars(module).items() if isinstance(v, bytes | bytearray)]
    a, b = new_session_key(), new_session_key()
    assert len(a) == 32 and a != b
    ds = make_dataset()
    outs = [Deidentifier(k).deidentify(ds) for k in (a, b, KEY)]
    assert len({o.PatientID for o in outs}) == 3 and len({o.StudyDate for o in outs}) >= 2


def test_datetime_utc_offsets_are_removed():
    ds = make_dataset()
    deid = Deidentifier(KEY)
    shifted = (dt.date(2019, 3, 14) + dt.timedelta(days=deid.date_shift_days("id:MRN00482913"))
               ).strftime("%Y%m%d")
    for value, expected in ((STUDY_DATE + "101733.000000+0100", "101733.000000"),
                            (STUDY_DATE + "1017-0500", "1017"), (STUDY_DATE + "+1400", ""),
                            (STUDY_DATE + "101733", "101733")):
        ds.AcquisitionDateTime = value
        assert deid.deidentify(ds).AcquisitionDateTime == shifted + expected, value
    ds.TimezoneOffsetFromUTC = "+0100"
    assert "TimezoneOffsetFromUTC" not in deid.deidentify(ds)


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_ages_over_89_become_90_or_older():
    deid = Deidentifier(KEY, DeidConfig(keep_patient_characteristics=True))
    ds = make_dataset()
    for age, kept in (("095Y", "090Y"), ("120Y", "090Y"), ("090Y", "090Y"), ("089Y", "089Y"),
                      ("067Y", "067Y"), ("011M", "011M"), ("003W", "003W"), ("006D", "006D"),
                      (" 95Y", None), ("95", None), ("95 years", None)):
        ds.PatientAge = age
        out = deid.deidentify(ds)
        assert out.get("PatientAge") == kept, age
        assert kept is None or len(out.PatientAge) == 4  # AS: exactly 4 characters


def test_issuer_of_patient_id_keeps_two_sites_apart():
    def patient(issuer):
        ds = make_dataset()
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
        return Deidentifier(KEY).deidentify(ds)

    barts, kings = patient("BARTS"), patient("KINGS")
    assert barts.PatientID != kings.PatientID  # one MRN, two sites: two patients
    assert patient("BARTS").PatientID == barts.PatientID
    # without an issuer the pseudonym is what it always was (folders ingested earlier stay linked)
    assert patient(None).PatientID == Deidentifier(KEY).pseudonym("id:MRN00482913")
    assert "IssuerOfPatientID" not in barts and "BARTS" not in "\n".join(_all_values(barts))


def test_the_input_dataset_is_not_modified():
    ds = make_dataset()
    ds.RescaleType = "DR JONES"  # rewritten to a defined term in the output
    ds.ModalityLUTSequence = [Dataset()]
    ds.ModalityLUTSequence[0].ModalityLUTType = "HOLLOWAY"
    ds.ModalityLUTSequence[0].add_new("LUTDescriptor", "US", [2, 0, 16])
    ds.ModalityLUTSequence[0].add_new("LUTData", "US", [0, 10])
    ds.PatientAge = "095Y"
    before = copy.deepcopy(ds)
    out = Deidentifier(KEY, DeidConfig(keep_patient_characteristics=True)).deidentify(ds)
    assert ds == before and ds.file_meta == before.file_meta
    assert ds.RescaleType == "DR JONES" and ds.PatientAge == "095Y"
    assert out.RescaleType == "US" and out.PatientAge == "090Y"
    assert ds.ModalityLUTSequence[0].ModalityLUTType == "HOLLOWAY"
    out.Manufacturer = "changed"  # nothing is shared: the output can be edited freely
    out.ModalityLUTSequence[0].LUTData = [5, 5]
    assert ds.Manufacturer == "Carestream Health" and list(ds.ModalityLUTSequence[0].LUTData) \
        == [0, 10]
