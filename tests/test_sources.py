"""Embedded data: pinned items, fetch errors, fetching from a folder, verification."""

from __future__ import annotations

import zipfile

import pytest

from biomed import sources
from biomed.errors import DataNotFetched, FetchError

REAL = sources.status("iu_reports") == "cached"
needs_reports = pytest.mark.skipif(not REAL, reason="run `biomed data fetch iu_reports` first")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOMED_CACHE", str(cache))
    return cache


def test_items_cover_the_design_table():
    assert set(sources.ITEMS) == {"pubmed", "iu_reports", "lung_masks", "label_tables",
                                  "chest_dicom", "minilm"}
    names = {m.name for m in sources.ITEMS["chest_dicom"].members}
    assert names == {"RG1_UNCI.dcm", "RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG1_J2KR.dcm"}
    for item in sources.ITEMS.values():
        assert "==" in item.package and item.licence
        assert all(len(m.sha256) == 64 and m.size > 0 for m in item.members)
        assert len({m.name for m in item.members}) == len(item.members)


def test_missing_item_names_the_fetch_command(empty_cache):
    assert sources.status("pubmed") == "missing"
    with pytest.raises(DataNotFetched, match=r"biomed data fetch pubmed"):
        sources.path("pubmed", "pubmed20n0014.xml.gz")
    with pytest.raises(DataNotFetched, match="unknown data item"):
        sources.path("nope")


def test_fetch_without_index_fails_with_one_line_and_how_to(empty_cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty_cache))  # nowhere to find the wheel
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    with pytest.raises(FetchError) as err:
        sources.fetch(["lung_masks"], log=lambda *_: None)
    msg = str(err.value)
    assert "\n" not in msg and "torchxrayvision==1.5.7" in msg
    assert "biomed data fetch --from DIR" in msg and "semantic_masks_v7labs_lungs.zip" in msg
    assert sources.status("lung_masks") == "missing"


def _fake_wheel(folder, members: dict[str, bytes], name="torchxrayvision-1.5.7-py3-none-any.whl"):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as z:
        for path, data in members.items():
            z.writestr(path, data)
    return folder / name


def test_checksum_mismatch_is_refused_and_leaves_nothing(empty_cache, tmp_path):
    member = sources.ITEMS["lung_masks"].members[0]
    _fake_wheel(tmp_path / "wheels", {member.path: b"x" * member.size})
    with pytest.raises(FetchError, match="sha256"):
        sources.fetch(["lung_masks"], wheels_from=tmp_path / "wheels", log=lambda *_: None)
    assert not any((empty_cache / "lung_masks").iterdir())  # no partial file left


def test_missing_wheel_in_folder(empty_cache, tmp_path):
    (tmp_path / "wheels").mkdir()
    with pytest.raises(FetchError, match=r"no wheel torchxrayvision-1\.5\.7-"):
        sources.fetch(["lung_masks"], wheels_from=tmp_path / "wheels", log=lambda *_: None)


@pytest.mark.data
@needs_reports
def test_fetch_from_folder_of_wheels_and_loose_files(tmp_path, monkeypatch):
    real = sources.path("iu_reports")
    item = sources.ITEMS["iu_reports"]
    wheel_members = {m.path: (real / m.name).read_bytes() for m in item.members}
    _fake_wheel(tmp_path / "wheels", wheel_members)
    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path / "cache"))
    logs = []
    assert sources.fetch(["iu_reports"], wheels_from=tmp_path / "wheels",
                         log=logs.append) == {"iu_reports": "cached"}
    assert sources.sha256_file(sources.path("iu_reports", "NLMCXR_reports.tgz")) == \
        item.members[0].sha256
    sources.fetch(["iu_reports"], wheels_from=tmp_path / "wheels", log=logs.append)
    assert logs[-1].startswith("iu_reports: cached")  # idempotent

    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path / "cache2"))
    loose = tmp_path / "loose"
    loose.mkdir()
    for m in item.members:
        (loose / m.name).write_bytes((real / m.name).read_bytes())
    assert sources.import_files(loose, ["iu_reports"]) == {"iu_reports": "cached"}
    assert sources.known_sha256(sources.path("iu_reports", "NLMCXR_reports.tgz")) == \
        item.members[0].sha256


@pytest.mark.data
def test_every_item_is_cached_and_verified():
    """`make test` fetches first; every pinned file must be present with its size."""
    assert {name: sources.status(name) for name in sources.ITEMS} == \
        {name: "cached" for name in sources.ITEMS}
    m = sources.ITEMS["iu_reports"].members[0]
    assert sources.sha256_file(sources.path("iu_reports", m.name)) == m.sha256


@pytest.mark.data
@needs_reports
def test_a_cached_file_changed_after_verification_is_not_trusted(tmp_path, monkeypatch):
    real = sources.path("iu_reports")
    item = sources.ITEMS["iu_reports"]
    _fake_wheel(tmp_path / "wheels", {m.path: (real / m.name).read_bytes() for m in item.members})
    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path / "cache"))
    sources.fetch(["iu_reports"], wheels_from=tmp_path / "wheels", log=lambda *_: None)
    tgz = sources.path("iu_reports", "NLMCXR_reports.tgz")
    data = bytearray(tgz.read_bytes())
    data[1000] ^= 0xFF  # same size, different content
    tgz.write_bytes(bytes(data))
    assert sources.status("iu_reports") == "partial"
    assert sources.known_sha256(tgz) is None  # provenance rehashes instead of trusting the pin
    sources.fetch(["iu_reports"], wheels_from=tmp_path / "wheels", log=lambda *_: None)
    assert sources.sha256_file(tgz) == item.members[0].sha256
    assert sources.status("iu_reports") == "cached"


def test_an_oversized_member_is_refused_before_a_byte_is_written(empty_cache, tmp_path, monkeypatch):
    """A member declaring more than the pinned size (a zip bomb in a look-alike wheel) is refused
    from its declared size: the old code streamed it to disk up to its claim first."""
    member = sources.ITEMS["lung_masks"].members[0]
    _fake_wheel(tmp_path / "wheels", {member.path: b"\0" * (member.size + 1)})
    opened = []
    real_partial = sources._partial_file

    def spy(dest, name):
        opened.append(name)
        return real_partial(dest, name)

    monkeypatch.setattr(sources, "_partial_file", spy, raising=False)
    with pytest.raises(FetchError, match=f"declares {member.size + 1} bytes"):
        sources.fetch(["lung_masks"], wheels_from=tmp_path / "wheels", log=lambda *_: None)
    assert opened == []
    assert not any((empty_cache / "lung_masks").iterdir())


def test_concurrent_fetches_use_their_own_temporary_files(tmp_path):
    with sources._partial_file(tmp_path, "x.zip") as (a, _fa), \
            sources._partial_file(tmp_path, "x.zip") as (b, _fb):
        assert a != b and a.exists() and b.exists()
    assert not any(tmp_path.iterdir())  # neither is left behind
