"""Hostile and broken DICOM (tests/helpers/hostile.py) at the reader: every failure, even a
decoder panic, is one `InputError` line naming the file; limits are checked before decoding."""

from __future__ import annotations

import pytest

from biomed.errors import InputError
from biomed.imaging.dicom import guard
from biomed.imaging.dicom.read import ReadOptions, metadata, read_dataset, read_dicom
from tests.helpers.hostile import HOSTILE, deflate_bomb, good_set, hostile_set

SMALL = ReadOptions(limits=guard.Limits(max_file_bytes=1 << 20))  # the 8 MB bomb's cap in tests

EXPECTED = {  # file -> a phrase its one-line reason must hold
    "rle_panic.dcm": "PanicException",
    "deflate_bomb.dcm": "decompression bomb",
    "pixel_count_bomb.dcm": "image too large: the header declares 20000x20000",
    "j2k_size_bomb.dcm": "the JPEG 2000 codestream declares 60000x60000",
    "nested_sequences.dcm": "nesting too deep",
    "voi_lut_2000_bits.dcm": "OverflowError",
    "voi_lut_two_values.dcm": "ValueError",
    "slope_nan.dcm": "Rescale Slope nan",
    "slope_inf.dcm": "Rescale Slope inf",
    "slope_1e308.dcm": "overflow the stored values",
    "truncated_native.dcm": "truncated",
    "truncated_j2k.dcm": "truncated",
    "wrong_transfer_syntax.dcm": "cannot decode",
    "not_dicom.dcm": "not a DICOM file",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_set(tmp_path_factory.mktemp("hostile"))


def test_the_set_covers_every_case():
    assert set(EXPECTED) == set(HOSTILE) and len(HOSTILE) >= 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_file_is_one_input_error_naming_it(hostile, name):
    with pytest.raises(InputError) as err:
        read_dicom(hostile[name], SMALL)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(hostile[name]))
    assert EXPECTED[name] in msg, msg


def test_header_only_reads_are_capped_too(tmp_path):
    """pydicom inflates a deflated dataset whole even with stop_before_pixels."""
    bomb = deflate_bomb(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 64_000  # ~8 MB inflated from a few tens of KB
    with pytest.raises(InputError, match="decompression bomb"):
        read_dataset(bomb, stop_before_pixels=True, limits=SMALL.limits)
    assert read_dicom(bomb).image.shape[0] > 1000  # under the default cap it is a real image


def test_file_size_cap(tmp_path):
    good = good_set(tmp_path)["holloway.dcm"]
    with pytest.raises(InputError, match="file too large"):
        read_dataset(good, limits=guard.Limits(max_file_bytes=100))


def test_good_files_still_read(tmp_path):
    for path in good_set(tmp_path).values():
        img = read_dicom(path)
        assert img.image.shape == (64, 48) and metadata(read_dataset(path)).rows == 64


def test_the_policy_keeps_interrupts(tmp_path):
    with pytest.raises(KeyboardInterrupt), guard.decoder_errors(tmp_path):
        raise KeyboardInterrupt
    with pytest.raises(InputError, match="cannot read: PanicException"), \
            guard.decoder_errors(tmp_path):
        raise type("PanicException", (BaseException,), {})("boom")
