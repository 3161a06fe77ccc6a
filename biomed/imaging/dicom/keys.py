"""The de-identification key: a secret that makes pseudonyms, UID remapping, date shifts and
path hashes consistent and irreversible (`biomed.imaging.dicom.deid`).

Whoever holds a key, or can run a de-identifier with it and read the output, can link outputs
back to their sources: recompute the pseudonym of a known patient id, or upload a file with
that id and read back the pseudonym and the date shift. Hence two kinds of key:

- **per machine** (`load_or_create_key`): batch tools (``biomed dicom ingest``, ``predict``)
  read ``$BIOMED_CACHE/deid.key`` (or ``--key-file``), created on first use, readable by its
  owner only and kept out of every output folder, so that folders ingested at different times
  stay linked;
- **per process or session** (`new_session_key`): a service that de-identifies what strangers
  upload (the teaching app) makes its own in memory, never the key of a released dataset.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from biomed.errors import ConfigError, InputError
from biomed.outpaths import check_creatable

__all__ = ["MIN_KEY_BYTES", "check_key", "check_key_file", "default_key_file",
           "load_or_create_key", "new_key", "new_session_key"]

MIN_KEY_BYTES = 16


def default_key_file() -> Path:
    """The machine's key file: ``$BIOMED_CACHE/deid.key`` (outside every output folder)."""
    from biomed.sources import cache_dir

    return cache_dir() / "deid.key"


def new_key() -> bytes:
    """A fresh 256-bit secret for UID remapping, pseudonyms, date shifts and path hashes."""
    return secrets.token_bytes(32)


def new_session_key() -> bytes:
    """A key for one process or session of a service that de-identifies uploads (the app).

    Kept in memory only and never the key of a released dataset: with that key, uploading a
    file with a known patient id would give back the pseudonym and date shift used in the
    release. Outputs of two sessions cannot be linked.
    """
    return new_key()


def load_or_create_key(path: str | Path) -> bytes:
    """Read a key file (hex), or create one readable by its owner only.

    Whoever holds the key can link outputs back to the inputs they came from (by recomputing
    the mapping of a known UID or patient id): keep it apart from data that is shared.
    """
    path = Path(path)
    if path.exists():
        return _read_key(path)
    check_key_file(path)
    key = new_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
    except OSError as e:
        raise InputError(path, f"cannot create the de-identification key file "
                         f"({e.strerror or e})") from None
    return key


def check_key_file(path: str | Path) -> None:
    """Check, creating nothing, that a key file can be read (it exists) or created.

    Raises `InputError` naming the path: a folder, an unreadable or malformed key, or a place
    where no file can be created (a file or an unwritable folder on the way).
    """
    path = Path(path)
    if path.exists():
        _read_key(path)
        return
    check_creatable(path, "the de-identification key file")


def _read_key(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(path, "not a de-identification key file (it is a folder or a device)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read the de-identification key ({e.strerror or e})") \
            from None
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except ValueError:  # also UnicodeDecodeError: a binary file
        raise InputError(path, "not a de-identification key (expected hex)") from None
    if len(key) < MIN_KEY_BYTES:
        raise InputError(path, f"de-identification key too short (need >= {MIN_KEY_BYTES} "
                         "bytes)")
    return key


def check_key(key: object) -> bytes:
    """The key as bytes, or a `ConfigError` when it is not one (too short, or not bytes)."""
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        what = (f"{len(key)} bytes" if isinstance(key, bytes | bytearray)
                else type(key).__name__)
        raise ConfigError(f"a de-identification key is {MIN_KEY_BYTES} or more bytes "
                          f"(load_or_create_key or new_session_key), not {what}")
    return bytes(key)
