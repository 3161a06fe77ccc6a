"""DICOM files for tests: realistic PACS-export datasets (`make_dataset`), the identifying values
they hold (for "nothing left" checks after de-identification), saving, and a truncated JPEG 2000.

`make_dataset` builds a DX chest radiograph with real tags and VRs, identity, site, staff, dates,
UIDs, free text, private tags and a request sequence; every value is fixed, so two calls with
the same arguments give the same file.
"""

from __future__ import annotations

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence

PATIENTS = {
    "holloway": dict(PatientName="HOLLOWAY^MARGARET^ROSALIND", PatientID="MRN00482913",
                     PatientBirthDate="19510621", OtherPatientIDs="NHS4857731920",
                     PatientAddress="14 Larkspur Lane, Springfield",
                     PatientTelephoneNumbers="5550187342", PatientSex="F", PatientAge="067Y",
                     PatientWeight="61.5", PatientSize="1.63"),
    "przybylski": dict(PatientName="PRZYBYLSKI^TOMASZ", PatientID="MRN00917354",
                       PatientBirthDate="19480113", OtherPatientIDs="NHS9027716354",
                       PatientAddress="203 Quarry Road, Shelbyville",
                       PatientTelephoneNumbers="5550448812", PatientSex="M", PatientAge="071Y",
                       PatientWeight="82", PatientSize="1.79"),
}
# Values of the site and staff, the same in every generated file.
SITE = dict(InstitutionName="Saint Bartholomew Regional Hospital",
            InstitutionAddress="1 Hospital Plaza, Springfield",
            InstitutionalDepartmentName="Radiology East Wing",
            ReferringPhysicianName="OKAFOR^CHIDIEBERE", PerformingPhysicianName="LINDQVIST^ASTRID",
            OperatorsName="FERNSBY^GWENDOLYN", StationName="XRAYROOM3WS",
            DeviceSerialNumber="SN88412QX")
STUDY_DATE = "20190314"  # every generated study; shifted dates can never equal it


def free_text(patient: str = "holloway") -> dict[str, str]:
    """Free text as sites type it, naming the patient or staff (PS3.15 Table E.1-1: X)."""
    p = PATIENTS[patient]
    surname = p["PatientName"].split("^")[0]
    return dict(SeriesDescription=f"PA chest {surname}",
                ProtocolName=f"Chest 2 views for {p['PatientName']}",
                DerivationDescription=f"Cropped by {SITE['OperatorsName']} for {p['PatientID']}",
                AcquisitionDeviceProcessingDescription=f"GRID {surname} {p['PatientID']}",
                AcquisitionComments=f"{surname} could not hold breath",
                WindowCenterWidthExplanation=f"{surname} lungs")


def identifying_values(patient: str = "holloway") -> list[str]:
    """Every identifying value `make_dataset` puts in a header (for "nothing left" checks)."""
    p = PATIENTS[patient]
    values = [v for k, v in p.items() if k not in ("PatientSex", "PatientAge", "PatientWeight",
                                                   "PatientSize")]
    values += p["PatientName"].split("^")
    values += [v for v in SITE.values()] + SITE["ReferringPhysicianName"].split("^")
    values += [STUDY_DATE, f"ACC{p['PatientID'][-6:]}", "Fell on ice at home"]
    values += [*free_text(patient).values(), f"PA {p['PatientName']}",
               f"Chest of {p['PatientName']}"]
    return values


def make_dataset(patient: str = "holloway", *, index: int = 0, rows: int = 64,
                 cols: int = 48, bits_stored: int = 12, photometric: str = "MONOCHROME2",
                 signed: bool = False, pixels: np.ndarray | None = None,
                 window: tuple[float, float] | None = (2048, 4096),
                 spacing: list[str] | None = None, modality: str = "DX",
                 burned_in: str | None = "NO") -> FileDataset:
    """A DX chest radiograph as a PACS export holds it: identity, site, staff, dates, UIDs,
    free text, private tags, a request sequence. Pixels default to a chest-like phantom with
    dark lungs (in the MONOCHROME2 sense; stored inverted for MONOCHROME1)."""
    p = PATIENTS[patient]
    n = sum(map(ord, patient)) % 1000
    study_uid = f"1.2.840.113619.2.55.3.2831164355.{n}.1"  # a vendor root, as in real exports
    sop_uid = f"{study_uid}.{index + 1}.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dcm_uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
    meta.SourceApplicationEntityTitle = "BARTSPACS"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.InstanceCreationDate = STUDY_DATE
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "101502", "101733", "101734.250"
    ds.AcquisitionDateTime = STUDY_DATE + "101733.000000"
    ds.AccessionNumber = f"ACC{p['PatientID'][-6:]}"
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Carestream Health"
    ds.ManufacturerModelName = "DRX-Evolution"
    for k, v in {**SITE, **p}.items():
        setattr(ds, k, v)
    ds.StudyDescription = f"CHEST PA {p['PatientName'].split('^')[0]}"
    ds.ImageComments = "Fell on ice at home"
    for k, v in free_text(patient).items():
        setattr(ds, k, v)
    # coded view and anatomy, with the free-text Code Meaning a site may type (never copied)
    view, region = Dataset(), Dataset()
    view.CodeValue, view.CodingSchemeDesignator = "R-10214", "SRT"
    view.CodeMeaning = f"PA {p['PatientName']}"
    region.CodeValue, region.CodingSchemeDesignator = "T-D3000", "SRT"
    region.CodeMeaning = f"Chest of {p['PatientName']}"
    ds.ViewCodeSequence, ds.AnatomicRegionSequence = Sequence([view]), Sequence([region])
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".2"
    ds.FrameOfReferenceUID = study_uid + ".3"
    ds.StudyID = f"ST{p['PatientID'][-4:]}"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.KVP, ds.ExposureTime, ds.Exposure = "120", "8", "2"
    ds.DistanceSourceToDetector = "1800"
    ds.ImagerPixelSpacing = ["0.139", "0.139"]
    if spacing is not None:
        ds.PixelSpacing = spacing
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    req = Dataset()
    req.RequestedProcedureID = "RP" + p["PatientID"]
    req.ScheduledProcedureStepID = "SPS" + p["PatientID"]
    req.RequestedProcedureDescription = "Chest X-ray for " + p["PatientName"]
    ds.RequestAttributesSequence = Sequence([req])
    ref = Dataset()
    ref.ReferencedSOPClassUID = dcm_uid.DigitalXRayImageStorageForPresentation
    ref.ReferencedSOPInstanceUID = study_uid + ".99.1"
    ds.SourceImageSequence = Sequence([ref])
    block = ds.private_block(0x0029, "ACME CR PRIVATE 1.0", create=True)
    block.add_new(0x10, "LO", p["PatientName"].replace("^", " "))
    block.add_new(0x11, "LO", p["PatientID"])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if pixels is None:
        pixels = phantom(rows, cols, bits_stored, invert=photometric == "MONOCHROME1",
                         seed=index + n)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    return ds


def phantom(rows: int, cols: int, bits: int, invert: bool = False, seed: int = 0) -> np.ndarray:
    """Stored values of a crude chest: bright body, two dark lung fields, a bright spine."""
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    img = np.full((rows, cols), 0.75)
    for cx in (0.28, 0.72):  # lungs
        img[((x - cx) / 0.17) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1] = 0.2
    img[(abs(x - 0.5) < 0.06)] = 0.95  # mediastinum and spine
    img += np.random.default_rng(seed).normal(0, 0.01, img.shape)
    top = 2**bits - 1
    values = np.clip(img, 0, 1) * top
    return np.round(top - values if invert else values).astype(np.uint16)


def save(ds: Dataset, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def truncated_j2k(tmp_path, name: str = "cut_j2k.dcm"):
    """A JPEG 2000 file cut in the middle of its encapsulated Pixel Data."""
    ds = make_dataset(rows=128, cols=96)
    ds.compress(dcm_uid.JPEG2000Lossless)
    whole = tmp_path / "whole_j2k.dcm"
    save(ds, whole)
    raw = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(raw[:len(raw) - len(ds.PixelData) // 2])
    whole.unlink()
    return cut
