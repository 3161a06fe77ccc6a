"""What a value read from a model folder's config may be: plain data that selects no file, no
network source and no code. Shared by the allow-lists of the classifier's ``config.json``
(`biomed.imaging.classifier.model`) and CLIP's ``open_clip_config.json``
(`biomed.imaging.clip.folder_config`), which differ only in how large a number may be.
"""

from __future__ import annotations

import math
from typing import Any

NAME_CHARS = (":", "/", "\\")  # a source prefix (hf-hub:, local-dir:) or a path


def is_number(value: Any, limit: float) -> bool:
    """A flag, or a finite number with ``|value| <= limit`` (a width of 10**9 would be a memory
    bomb before any weight is read)."""
    return isinstance(value, bool) or (isinstance(value, int | float)
                                       and math.isfinite(value) and abs(value) <= limit)


def names_a_source(text: str) -> bool:
    """Whether a model name holds a source prefix or a path."""
    return any(c in text for c in NAME_CHARS)


def is_plain(value: Any, limit: float) -> bool:
    """A number, flag, None, short word, or a flat list of numbers."""
    if value is None or is_number(value, limit):
        return True
    if isinstance(value, str):
        return len(value) <= 64 and not names_a_source(value)
    if isinstance(value, list | tuple):
        return len(value) <= 64 and all(is_number(v, limit) for v in value)
    return False
