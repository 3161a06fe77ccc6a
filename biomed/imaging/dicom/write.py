"""Synthetic images out as DICOM, marked so that no one takes them for a patient's.

A generated chest X-ray is written as a Secondary Capture object (PS3.3 A.8) with the marks the
standard has for this: Image Type ``DERIVED\\SECONDARY`` (PS3.3 C.7.6.1.1.2), Conversion Type
``SYN`` (synthetic image, PS3.3 C.8.6.1), a Derivation Description naming the model and a salted
hash of the prompt (never the prompt text, which may quote a real report), Burned In
Annotation ``NO``, fresh UIDs, and a patient that is plainly not one (``SYNTHETIC^NOT A PATIENT``).

The prompt policy (`PROMPT_POLICIES`) says what every output of a synthetic image records of its
prompt (PNG text chunks, manifest lines; `prompt_provenance`): ``text``, the prompt itself, for a
prompt a user typed or public text (the IU reports); ``hash``, an HMAC-SHA256 under a secret
salt, for prompts taken from a restricted dataset (MIMIC-CXR reports may not be redistributed).
The salt is secret because a plain or publicly salted hash of a short templated prompt
("Small left pleural effusion.") is guessed back by hashing the candidates; whoever holds the
salt can still check which prompt made an image. DICOM always records the hash.

Pixels are stored as 16-bit MONOCHROME2, ``round(x * 65535)`` like the workbench's 16-bit PNGs,
with the identity window 32768/65536 (PS3.3 C.11.2.1.2: ``y = x / 65535`` exactly), so that the
reader in `biomed.imaging.dicom.read` gives back the same pixels.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import FileDataset, FileMetaDataset

from biomed.errors import ConfigError
from biomed.imaging.core.pixels import check_image, to_uint16

SYNTHETIC_PATIENT = "SYNTHETIC^NOT A PATIENT"
PROMPT_POLICIES = ("text", "hash")
MIN_SALT_BYTES = 16


def check_prompt_policy(policy: str) -> str:
    """``policy`` when it is one of `PROMPT_POLICIES`, else a `ConfigError`."""
    if policy not in PROMPT_POLICIES:
        raise ConfigError(f"prompt_policy={policy!r}: one of {', '.join(PROMPT_POLICIES)} "
                          "(text: record the prompt; hash: a salted hash of it, for prompts "
                          "from restricted datasets)")
    return policy


def prompt_hash(prompt: str, salt: bytes) -> str:
    """``hmac-sha256:<hex>`` of a prompt under a secret salt (>= 16 bytes)."""
    if not isinstance(salt, bytes | bytearray) or len(salt) < MIN_SALT_BYTES:
        raise ConfigError(f"a prompt hash needs a secret salt of {MIN_SALT_BYTES} or more bytes")
    mac = hmac.new(bytes(salt), b"prompt\0" + prompt.encode("utf-8"), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()


def prompt_provenance(prompt: str, policy: str, salt: bytes | None = None) -> dict[str, Any]:
    """What a synthetic image's provenance records of its prompt under ``policy``:
    ``{"prompt_policy": "text", "prompt": ...}`` or ``{"prompt_policy": "hash", "prompt_hash":
    ...}`` (the hash needs ``salt``)."""
    if check_prompt_policy(policy) == "text":
        return {"prompt_policy": "text", "prompt": prompt}
    if salt is None:
        raise ConfigError("prompt_policy=hash needs a secret salt (the de-identification key)")
    return {"prompt_policy": "hash", "prompt_hash": prompt_hash(prompt, salt)}


def dataset_prompt_policy(dataset: object) -> str:
    """The prompt policy of a dataset whose reports are the prompts: its ``prompt_policy``
    (set by its data config), ``hash`` when it has none."""
    return check_prompt_policy(str(getattr(dataset, "prompt_policy", None) or "hash"))


def synthetic_dataset(img: np.ndarray, *, model_id: str, prompt: str, salt: bytes,
                      seed: int | None = None, steps: int | None = None,
                      guidance: float | None = None, view_position: str = "PA",
                      pixel_spacing: tuple[float, float] | None = None) -> FileDataset:
    """A Secondary Capture dataset holding a synthetic image (2-D float in [0, 1], lungs dark);
    the prompt is recorded as its hash under the secret ``salt`` (`prompt_hash`)."""
    img = check_image(img, "synthetic image")
    digest = prompt_hash(prompt, salt)
    now = dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dcm_uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = dcm_uid.generate_uid()
    meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)

    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a model id may not be ASCII
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = dcm_uid.generate_uid()
    ds.SeriesInstanceUID = dcm_uid.generate_uid()
    ds.ContentDate = ds.StudyDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.StudyTime = now.strftime("%H%M%S")
    ds.Modality = "OT"  # SC objects name the modality of what they copy; nothing was acquired
    ds.ConversionType = "SYN"
    ds.Manufacturer = "biomed (synthetic)"
    ds.StudyDescription = ds.SeriesDescription = "SYNTHETIC IMAGE - not a patient"
    ds.PatientName = SYNTHETIC_PATIENT
    ds.PatientID = "SYNTHETIC-" + hashlib.sha256(
        f"{model_id}\0{digest}\0{seed}".encode()).hexdigest()[:12].upper()
    ds.PatientBirthDate = ds.PatientSex = ds.AccessionNumber = ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.ViewPosition = view_position
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.DerivationDescription = derivation_description(model_id, digest, seed, steps, guidance)
    ds.LossyImageCompression = "00"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 32768, 65536  # identity: y = x / 65535
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
    ds.PixelData = to_uint16(img).astype("<u2").tobytes()
    return ds


def derivation_description(model_id: str, prompt_digest: str, seed: int | None = None,
                           steps: int | None = None, guidance: float | None = None) -> str:
    """Derivation Description (ST, at most 1024 characters): model, prompt hash, sampling."""
    parts = [f"SYNTHETIC image generated by model {model_id}", f"prompt {prompt_digest}"]
    parts += [f"{k} {v}" for k, v in (("seed", seed), ("steps", steps), ("guidance", guidance))
              if v is not None]
    return "; ".join(parts)[:1024]


def write_synthetic_dicom(path: str | Path, img: np.ndarray, *, model_id: str, prompt: str,
                          salt: bytes, seed: int | None = None, steps: int | None = None,
                          guidance: float | None = None, view_position: str = "PA",
                          pixel_spacing: tuple[float, float] | None = None) -> Path:
    """Write a synthetic image as a DICOM file (written to a temporary name, then renamed)."""
    path = Path(path)
    ds = synthetic_dataset(img, model_id=model_id, prompt=prompt, salt=salt, seed=seed,
                           steps=steps, guidance=guidance, view_position=view_position,
                           pixel_spacing=pixel_spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path
