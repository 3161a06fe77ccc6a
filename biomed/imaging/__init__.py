"""Chest X-ray imaging: DICOM I/O, de-identification, reports, phantom, datasets, models."""
