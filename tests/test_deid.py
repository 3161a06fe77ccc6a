"""De-identification: PS3.15 Annex E Basic Profile, UID remapping, date shifts, private tags,
the marks it leaves, burned-in annotation, and the key."""

from __future__ import annotations

import datetime as dt
import stat

import numpy as np
import pydicom
import pytest
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset

from biomed import sources
from biomed.errors import InputError
from biomed.imaging.dicom import read as dicom
from biomed.imaging.dicom.deid import (
    FREE_TEXT_ACTIONS,
    BurnedInAnnotation,
    DeidConfig,
    Deidentifier,
    code_meaning,
    load_or_create_key,
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
