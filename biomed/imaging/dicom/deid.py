"""De-identification of DICOM datasets: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile.

The profile (PS3.15 E.2, Table E.1-1) lists the attributes that may identify a patient, staff
member or institution and an action for each: X remove, Z empty (or a dummy), D dummy value,
U remap UID, K keep. This module applies it as an **allowlist**: the new dataset holds only the
attributes named below (pixel description, acquisition technique, coded view and anatomy), each
with its Table E.1-1 action, and nothing else. Every attribute the table removes is therefore
removed, and so is every attribute it does not know (free-text comments, vendor oddities, all
private tags, all sequences except coded ones), which makes the result at least as strict as the
Basic Profile. The Type 1/2 attributes the image IODs need survive as dummies (Z/D) or remapped
UIDs (U), so the output is still valid DICOM.

Free text is never copied. Descriptions, comments, protocol names and explanations (Study and
Series Description, Protocol Name, Image Comments, Derivation Description, Acquisition Device
Processing Description, Window Center & Width Explanation, LUT Explanation...) are removed,
whatever they hold: `FREE_TEXT_ACTIONS` lists them with their Table E.1-1 action. Inside the
coded sequences that are kept (View Code, Anatomic Region) only the code itself survives: Code
Meaning (LO, typed in by whoever built the item, e.g. "PA DOE^JOHN") is rebuilt from the coding
scheme and code value (`code_meaning`), and items of private or local coding schemes (``99...``),
whose code values may be any text, are dropped. Rescale Type and Modality LUT Type (LO) keep only
their PS3.3 C.11.1.1.2 defined terms. The few text attributes kept (Manufacturer, Manufacturer's
Model Name, Filter Type, and coded string (CS) attributes) are set by the device, not typed per
patient, and are not in Table E.1-1 (the profile keeps them too).

Two PS3.15 options are available (E.3, and the codes of CID 7050 that record them):

- Retain Longitudinal Temporal Information with Modified Dates (113107), the default: every
  date of a patient is shifted by the same number of days (derived from a secret key and the
  patient id), which keeps intervals between studies. With ``dates="remove"`` the Basic Profile
  applies instead: Study/Content Date and Time are emptied, other dates removed.
- Retain Patient Characteristics (113108): sex, age, size and weight are kept; by default they
  are not (the Basic Profile empties sex and removes the others). An age over 89 years becomes
  ``090Y``, read as "90 or older" (HIPAA Safe Harbor groups those ages into one category); an
  age that is not a valid Age String (``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``) is removed.

Dates keep no time zone: the offset of a DT value (``&ZZXX``) and Timezone Offset From UTC are
removed, since a place's offset narrows where the patient was.

UIDs are remapped to ``2.25.<decimal of an HMAC-SHA256 of the UID>`` (PS3.5 B.2): the same input
UID gives the same output UID for a given key, within a run and across runs that share the key,
and the mapping cannot be reversed without the key. Patient ids (with their Issuer of Patient ID,
so that equal MRNs of two sites stay two patients) become pseudonyms the same way, so images of
one patient stay together (the split rule hashes them) without naming anyone.

The key is the caller's (`Deidentifier` takes it; there is no module-wide key): whoever can run a
de-identifier with a key and read its output can look up the pseudonym and date shift of any
patient id under that key. Batch tools read one key per machine (`load_or_create_key`,
``$BIOMED_CACHE/deid.key``) so that folders ingested at different times stay linked; a service
that de-identifies what strangers upload (the app) takes a fresh key per process or session
(`new_session_key`) and never the key of a released dataset.

Burned-in text in the pixels is not searched for (the Clean Pixel Data option is not offered):
images whose header says or suggests their pixels may identify the patient are refused
(`biomed.imaging.dicom.burned_in`) unless the caller opts in. Pixel Data is never copied: it is
decoded and written anew (`biomed.imaging.dicom.reencode`), so that bits above Bits Stored,
bytes after the image and comment segments inside a JPEG or JPEG 2000 codestream are left
behind. The input dataset is never modified.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import uid as dcm_uid
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from biomed.errors import ConfigError
from biomed.imaging.dicom.burned_in import BurnedInAnnotation, check_burned_in
from biomed.imaging.dicom.guard import DEFAULT_LIMITS, Limits
from biomed.imaging.dicom.keys import (
    check_key,
    check_key_file,
    default_key_file,
    load_or_create_key,
    new_key,
    new_session_key,
)
from biomed.imaging.dicom.reencode import reencode_pixels

__all__ = ["FREE_TEXT_ACTIONS", "METHOD_NAME", "BurnedInAnnotation", "DeidConfig",
           "Deidentifier", "check_key_file", "code_meaning", "default_key_file",
           "load_or_create_key", "new_key", "new_session_key"]

METHOD_NAME = "biomed PS3.15 Annex E Basic Profile (allowlist)"
AGE_CAP = "090Y"  # "90 or older" (HIPAA Safe Harbor: ages over 89 form one category)

# CID 7050 "De-identification Method" codes (PS3.16).
_CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
_CODE_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_CODE_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")

# Kept as they are (Table E.1-1 has no action for them, or K): how the pixels were made and
# how to display them. Keywords, checked against pydicom's dictionary at import.
_KEEP = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "Modality", "ConversionType",
    "PresentationIntentType", "Manufacturer", "ManufacturerModelName", "BodyPartExamined",
    "ViewPosition", "ImageLaterality", "Laterality", "PatientOrientation", "SeriesNumber",
    "InstanceNumber", "AcquisitionNumber", "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure",
    "ExposureInuAs", "DistanceSourceToDetector", "DistanceSourceToPatient",
    "EstimatedRadiographicMagnificationFactor", "Grid", "FilterType", "FocalSpots",
    "DetectorType", "ImagerPixelSpacing", "PixelSpacing", "PixelSpacingCalibrationType",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
    "FrameIncrementPointer", "Rows", "Columns", "PixelAspectRatio", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "SmallestImagePixelValue",
    "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "BurnedInAnnotation", "RecognizableVisualFeatures", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "PresentationLUTShape",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
)  # Pixel Data is decoded and written anew (`reencode_pixels`), never copied
# Sequences kept: LUT items keep the allowlist plus the LUT itself (below); coded items (View
# Code, Anatomic Region) are rebuilt from their code (`_code_item`).
_KEEP_SEQUENCES = ("ModalityLUTSequence", "VOILUTSequence", "ViewCodeSequence",
                   "AnatomicRegionSequence")
_KEEP_IN_ITEMS = ("LUTDescriptor", "LUTData")
# Coded items (View Code, Anatomic Region): the code is kept, its meaning rebuilt (never copied).
_CODED_SEQUENCES = ("ViewCodeSequence", "AnatomicRegionSequence")
# LO attributes whose PS3.3 C.11.1.1.2 defined terms are kept; any other value becomes "US"
# (unspecified), a valid value that names no one.
_DEFINED_TERMS = {
    "RescaleType": ("OD", "HU", "US", "MGML", "Z_EFF", "ED", "EDW", "HU_MOD", "PCT"),
    "ModalityLUTType": ("OD", "HU", "US", "MGML", "Z_EFF", "ED", "EDW", "HU_MOD", "PCT"),
}

# Free text that may name a patient, a member of staff or a place, and what is done with it.
# None is on the allowlist, so every one is removed. "X", "X/D", "X/Z": the attribute's Table
# E.1-1 action (where a dummy is allowed, removal is the stricter choice, and these are Type 3
# in the image IODs). "free text": removed as free text whatever Table E.1-1 says of it (an
# explanation or label of a window or LUT, the meaning or version of a code: a site may type
# anything there), except Code Meaning, which coded items need and which is rebuilt (D).
FREE_TEXT_ACTIONS = {
    "StudyDescription": "X", "SeriesDescription": "X", "ProtocolName": "X/D",
    "ImageComments": "X", "DerivationDescription": "X",
    "AcquisitionDeviceProcessingDescription": "X/D", "AcquisitionComments": "X",
    "AcquisitionProtocolDescription": "X", "PatientComments": "X",
    "AdditionalPatientHistory": "X", "AdmittingDiagnosesDescription": "X",
    "RequestedProcedureDescription": "X/Z", "PerformedProcedureStepDescription": "X",
    "ScheduledProcedureStepDescription": "X", "ContributionDescription": "X",
    "FrameComments": "X", "ReasonForStudy": "X", "ServiceEpisodeDescription": "X",
    "VisitComments": "X", "StudyComments": "X", "IdentifyingComments": "X",
    "ImagePresentationComments": "X", "TextComments": "X", "TextString": "X",
    "WindowCenterWidthExplanation": "free text", "LUTExplanation": "free text",
    "LUTLabel": "free text", "PixelSpacingCalibrationDescription": "free text",
    "CodingSchemeVersion": "free text", "CodeMeaning": "free text: D, rebuilt from the code",
}
# Standard codes of CID 4010 (DX View) and CID 4031 (Common Anatomic Regions) that chest
# radiographs carry, in SNOMED CT (SCT) and its retired SNOMED-RT form (SRT, also written SNM3),
# with their PS3.16 Code Meaning. Other codes of a standard scheme keep their code value as
# their meaning.
_CODE_MEANINGS = {
    ("SCT", "272479007"): "postero-anterior", ("SRT", "R-10214"): "postero-anterior",
    ("SRT", "R-40888"): "postero-anterior",
    ("SCT", "399348003"): "antero-posterior", ("SRT", "R-10206"): "antero-posterior",
    ("SCT", "399067008"): "lateral", ("SRT", "R-102CD"): "lateral",
    ("SCT", "399198007"): "right lateral", ("SRT", "R-10232"): "right lateral",
    ("SCT", "399173006"): "left lateral", ("SRT", "R-10236"): "left lateral",
    ("SCT", "399033003"): "frontal", ("SRT", "R-10202"): "frontal",
    ("SCT", "399059000"): "postero-anterior oblique", ("SRT", "R-10216"): "postero-anterior oblique",
    ("SCT", "399312000"): "antero-posterior oblique", ("SRT", "R-10208"): "antero-posterior oblique",
    ("SCT", "51185008"): "Chest", ("SCT", "816094009"): "Chest", ("SRT", "T-D3000"): "Chest",
    ("SCT", "416550000"): "Chest and Abdomen", ("SRT", "R-FAB55"): "Chest and Abdomen",
    ("SCT", "72410000"): "Mediastinum", ("SRT", "T-D3300"): "Mediastinum",
    ("SCT", "86598002"): "Apex of Lung", ("SRT", "T-280A0"): "Apex of Lung",
    ("SCT", "113197003"): "Rib", ("SRT", "T-11300"): "Rib",
    ("SCT", "56873002"): "Sternum", ("SRT", "T-11210"): "Sternum",
    ("SCT", "122495006"): "Thoracic spine", ("SRT", "T-11502"): "Thoracic spine",
}
# Coding schemes whose code values are codes (digits, or SNOMED-RT's letter-dash-code form),
# never free text. Items of any other scheme (private "99..." schemes above all) are dropped.
_CODE_PATTERNS = {
    "SCT": r"[0-9]{6,18}", "SRT": r"[A-Z]-[0-9A-Z]{4,6}", "SNM3": r"[A-Z]-[0-9A-Z]{4,6}",
    "DCM": r"[0-9]{3,16}", "LN": r"[0-9]{1,10}-[0-9]", "FMA": r"[0-9]{1,10}",
}
# Table E.1-1 "Z" (Type 2 in the image IODs): present, emptied or given a dummy value.
_EMPTY = ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID")
# Table E.1-1 "U": remapped.
_REMAP = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# Dates: Basic Profile action (Z or X) when dates are removed; shifted with option 113107.
_DATES = {"StudyDate": "Z", "SeriesDate": "X", "AcquisitionDate": "X", "ContentDate": "Z"}
_DATETIMES = {"AcquisitionDateTime": "X"}
_TIMES = {"StudyTime": "Z", "SeriesTime": "X", "AcquisitionTime": "X", "ContentTime": "Z"}
# Retain Patient Characteristics option; without it sex is emptied (Z), the rest removed (X).
_CHARACTERISTICS = {"PatientSex": "Z", "PatientAge": "X", "PatientSize": "X",
                    "PatientWeight": "X"}

for _kw in (*_KEEP, *_KEEP_SEQUENCES, *_KEEP_IN_ITEMS, *_EMPTY, *_REMAP, *_DATES, *_DATETIMES,
            *_TIMES, *_CHARACTERISTICS, *_DEFINED_TERMS):
    assert tag_for_keyword(_kw) is not None, _kw
for _kw in FREE_TEXT_ACTIONS:  # free text is never on the allowlist
    assert tag_for_keyword(_kw) is not None and _kw not in (*_KEEP, *_KEEP_IN_ITEMS), _kw


@dataclass(frozen=True)
class DeidConfig:
    """Choices PS3.15 leaves to the de-identifier (see the module docstring)."""

    dates: Literal["shift", "remove"] = "shift"
    max_shift_days: int = 3650  # shifts are 1..max_shift_days days into the past
    keep_patient_characteristics: bool = False
    allow_burned_in: bool = False

    def __post_init__(self) -> None:
        if self.dates not in ("shift", "remove"):
            raise ConfigError(f"dates must be 'shift' or 'remove', not {self.dates!r}")
        if self.max_shift_days < 1:
            raise ConfigError(f"max_shift_days must be >= 1, not {self.max_shift_days}")


class Deidentifier:
    """Applies the profile with the caller's secret key, so that mappings are consistent.

    The same key maps the same UID, patient id and path to the same output every time; another
    key gives unlinkable outputs. Batch tools pass the machine's key (`load_or_create_key`), a
    service for uploads a key of its own (`new_session_key`).
    """

    def __init__(self, key: bytes, config: DeidConfig | None = None):
        self.key = check_key(key)
        self.config = config or DeidConfig()

    # -- keyed mappings ---------------------------------------------------------------------

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """Remap a UID; standard UIDs (SOP classes, transfer syntaxes) are not identifying."""
        value = str(value).strip().rstrip("\0")
        if not value or value in dcm_uid.UID_dictionary:
            return value
        return "2.25." + str(int.from_bytes(self._mac("uid", value)[:16], "big"))

    def pseudonym(self, patient_key: str) -> str:
        """A patient pseudonym (``BM`` and 16 hex digits) for a patient id."""
        return "BM" + self._mac("patient", patient_key).hex()[:16].upper()

    def hash_text(self, text: str, n: int = 20) -> str:
        """A salted hash of any text (file paths of PACS exports often hold names)."""
        return self._mac("text", text).hex()[:n]

    def date_shift_days(self, patient_key: str) -> int:
        """The patient's date offset: the same for all of a patient's dates, 1..max days back."""
        n = int.from_bytes(self._mac("date", patient_key)[:8], "big")
        return -(1 + n % self.config.max_shift_days)

    # -- the profile ------------------------------------------------------------------------

    def deidentify(self, ds: Dataset, path: str | Path = "<dataset>", *,
                   pixels: Literal["reencode", "copy"] = "reencode",
                   limits: Limits = DEFAULT_LIMITS) -> Dataset:
        """A new, de-identified dataset (the input is not modified: nothing is shared with it).

        ``pixels="reencode"`` (the default) decodes the image and writes Pixel Data anew
        (`reencode_pixels`, within ``limits``). ``"copy"`` keeps the original Pixel Data bytes
        and transfer syntax, which may hold more than the image: only for a caller that decodes
        the result and writes nothing but the decoded image (ingest's PNG output), never for a
        dataset that is saved or shown.

        Raises `BurnedInAnnotation` when the pixels may identify the patient
        (`biomed.imaging.dicom.burned_in`) unless ``allow_burned_in``, and `InputError` when
        the pixels cannot be decoded.
        """
        if pixels not in ("reencode", "copy"):
            raise ConfigError(f"pixels must be 'reencode' or 'copy', not {pixels!r}")
        check_burned_in(ds, path, allow=self.config.allow_burned_in)
        patient_key = _patient_key(ds)
        out = Dataset()
        _copy(ds, out, _KEEP)
        for kw in _KEEP_SEQUENCES:
            if kw in ds and ds[kw].VR == "SQ":
                clean = (_code_item if kw in _CODED_SEQUENCES else self._clean_item)
                items = [clean(item) for item in ds[kw].value]
                setattr(out, kw, Sequence([item for item in items if item is not None]))
        _defined_terms(out)
        pseudo = self.pseudonym(patient_key)
        out.PatientName = pseudo  # Z (dummy value): keeps the patient's images together
        out.PatientID = pseudo
        for kw in _EMPTY:
            setattr(out, kw, "")
        for kw in _REMAP:
            if kw in ds and ds[kw].value:
                setattr(out, kw, self.uid(ds[kw].value))
        self._dates(ds, out, patient_key)
        self._characteristics(ds, out)
        self._mark(out)
        out.file_meta = self._file_meta(ds, out)
        if pixels == "copy":
            if "PixelData" in ds:  # in the source's transfer syntax, which the meta keeps
                out["PixelData"] = copy.deepcopy(ds["PixelData"])
        else:
            out.file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
            if "PixelData" in ds:
                out.file_meta.TransferSyntaxUID = reencode_pixels(ds, out, path, limits)
        return out

    def _clean_item(self, item: Dataset) -> Dataset:
        """A LUT item: the LUT itself (descriptor, data, type), never its explanation."""
        clean = Dataset()
        _copy(item, clean, (*_KEEP, *_KEEP_IN_ITEMS, *_DEFINED_TERMS))
        _defined_terms(clean)
        return clean

    def _dates(self, ds: Dataset, out: Dataset, patient_key: str) -> None:
        if self.config.dates == "remove":
            for kw, action in (*_DATES.items(), *_DATETIMES.items(), *_TIMES.items()):
                if action == "Z":
                    setattr(out, kw, "")
            out.LongitudinalTemporalInformationModified = "REMOVED"
            return
        days = self.date_shift_days(patient_key)
        for kw in _DATES:
            if kw in ds:
                setattr(out, kw, _shift_da(ds[kw].value, days))
        for kw in _DATETIMES:
            if kw in ds:
                setattr(out, kw, _shift_dt(ds[kw].value, days))
        _copy(ds, out, tuple(_TIMES))  # times of day are kept with shifted dates
        for kw, action in _TIMES.items():
            if action == "Z" and kw not in out:
                setattr(out, kw, "")
        for kw, action in _DATES.items():
            if action == "Z" and kw not in out:
                setattr(out, kw, "")
        out.LongitudinalTemporalInformationModified = "MODIFIED"

    def _characteristics(self, ds: Dataset, out: Dataset) -> None:
        if self.config.keep_patient_characteristics:
            _copy(ds, out, tuple(_CHARACTERISTICS))
            if "PatientAge" in out:
                age = cap_age(out.PatientAge)
                if age:
                    out.PatientAge = age
                else:
                    del out.PatientAge
        if "PatientSex" not in out:  # Type 2: present, empty (Z)
            out.PatientSex = ""

    def _mark(self, out: Dataset) -> None:
        """PS3.15 E.1.1: Patient Identity Removed, and which method and options were used."""
        codes = [_CODE_BASIC]
        methods = [METHOD_NAME]
        if self.config.dates == "shift":
            codes.append(_CODE_DATES)
            methods.append("Retain Longitudinal Temporal Info, Modified Dates")
        if self.config.keep_patient_characteristics:
            codes.append(_CODE_CHARACTERISTICS)
            methods.append("Retain Patient Characteristics")
        methods.append("private attributes removed")
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = methods  # LO, each value at most 64 characters
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)

    def _file_meta(self, ds: Dataset, out: Dataset) -> FileMetaDataset:
        meta = FileMetaDataset()
        src = getattr(ds, "file_meta", None)
        ts = src.get("TransferSyntaxUID") if src is not None else None
        meta.TransferSyntaxUID = ts or dcm_uid.ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = out.get("SOPClassUID", dcm_uid.SecondaryCaptureImageStorage)
        if "SOPInstanceUID" not in out:
            out.SOPInstanceUID = dcm_uid.generate_uid()
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
        return meta


def code_meaning(scheme: str, value: str) -> str | None:
    """The Code Meaning of a code, from the code alone (never from the file's text).

    A standard chest code (`_CODE_MEANINGS`) gets its PS3.16 meaning; any other code of a
    standard scheme gets its code value; a code of another scheme, or a code value that does not
    look like one of its scheme's codes, gets None (the item is dropped).
    """
    scheme, value = scheme.strip(), value.strip()
    if scheme == "SNM3":
        scheme = "SRT"
    if (scheme, value) in _CODE_MEANINGS:
        return _CODE_MEANINGS[scheme, value]
    pattern = _CODE_PATTERNS.get(scheme)
    return value if pattern and re.fullmatch(pattern, value) else None


def _code_item(item: Dataset) -> Dataset | None:
    """A code sequence item rebuilt from its code: value, scheme and a meaning derived from
    them (Code Meaning and Coding Scheme Version are free text and are not copied); None when
    the code is not of a standard scheme."""
    value = str(item.get("CodeValue", "") or "")
    scheme = str(item.get("CodingSchemeDesignator", "") or "")
    meaning = code_meaning(scheme, value)
    if meaning is None:
        return None
    clean = Dataset()
    clean.CodeValue, clean.CodingSchemeDesignator = value.strip(), scheme.strip()
    clean.CodeMeaning = meaning
    return clean


def _defined_terms(ds: Dataset) -> None:
    """Rescale Type / Modality LUT Type (LO): a defined term, else "US" (unspecified)."""
    for kw, terms in _DEFINED_TERMS.items():
        if kw in ds:
            term = str(ds[kw].value or "").strip().upper()
            setattr(ds, kw, term if term in terms else "US")


def cap_age(value) -> str:
    """An Age String (AS) as the characteristics option keeps it: ages over 89 years become
    ``090Y`` ("90 or older"); a value that is not ``nnn`` + D/W/M/Y gives "" (removed)."""
    text = str(value or "").strip().upper()
    if not re.fullmatch(r"[0-9]{3}[DWMY]", text):
        return ""
    if text.endswith("Y") and int(text[:3]) > 89:
        return AGE_CAP
    return text


def _copy(src: Dataset, dst: Dataset, keywords: Iterable[str]) -> None:
    """Copies of the named elements (never the element itself: changing the output must not
    change the input)."""
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is not None and tag in src:
            elem = src[tag]
            if elem.VR != "SQ":
                dst[tag] = copy.deepcopy(elem)


def _patient_key(ds: Dataset) -> str:
    """What identifies the patient: Patient ID with its Issuer (equal MRNs of two sites are two
    patients), else name + birth date, else the study."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
        return "id:" + pid + (f"|issuer:{issuer}" if issuer else "")
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}|{ds.get('PatientBirthDate', '')}"
    return "study:" + str(ds.get("StudyInstanceUID", "") or "")


def _shift_date(text: str, days: int) -> str:
    """YYYYMMDD shifted by ``days``; anything else (partial, malformed) is removed."""
    try:
        d = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (d + dt.timedelta(days=days)).strftime("%Y%m%d")


def _shift_da(value, days: int):
    """A DA value (or several) shifted; a partial or malformed date is removed."""
    if isinstance(value, MultiValue | list | tuple):
        return [_shift_da(v, days) for v in value]
    text = str(value or "").strip()
    return _shift_date(text, days) if len(text) == 8 else ""


def _shift_dt(value, days: int) -> str:
    """A DT value: its date part shifted, the time kept, the UTC offset (``&ZZXX``) removed; a
    partial DT is removed."""
    text = str(value or "").strip()
    if len(text) < 8:
        return ""
    head = _shift_date(text[:8], days)
    time = re.split(r"[+-]", text[8:], maxsplit=1)[0]
    return head + time if head else ""
