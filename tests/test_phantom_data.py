"""The paired dataset ``data=phantom_iu`` (biomed.imaging.phantom.dataset).

The mechanics (contract, exact labels, splits by report, the render-once cache) are tested with
a cheap fake renderer; one test renders with the real phantom once it exists.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import hydra
import numpy as np
import pytest

from biomed import sources
from biomed.config import compose
from biomed.errors import ConfigError
from biomed.imaging.core.findings import labels_of, parse_findings
from biomed.imaging.core.labels import CANONICAL_NAMES
from biomed.imaging.phantom.dataset import PhantomIU
from biomed.splits import SPLITS, assign_split
from tests.helpers.phantom import CALLS, FAKE_RENDERER, build, fake_render, make_reports, make_tgz


def test_contract_items_and_exact_labels(tmp_path: Path):
    ds = build(tmp_path)
    n_iu = sum(1 for r in make_reports() if r.mesh_major[0] not in ("Fractures, Bone/ribs",
                                                                    "No Indexing"))
    assert len(ds) == n_iu * 2 + 12  # 2 renders per report, 1 template per finding
    assert ds.labels.shape == (len(ds), len(CANONICAL_NAMES)) and ds.labels.dtype == np.float32
    assert ds.label_names == list(CANONICAL_NAMES)
    for col in ("id", "report_id", "patient_id", "split", "source", "render_seed", "findings",
                "attributes"):
        assert col in ds.metadata.columns
    item = ds[0]
    assert set(item) >= {"image", "labels", "report", "id", "report_id", "index", "source"}
    assert item["image"].dtype == np.float32 and item["image"].shape == (16, 16)
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["id"] == "CXR1#0" and item["report_id"] == "CXR1" and item["index"] == 0
    assert item["report"] == "Impression 1. Findings 1." and item["source"] == "iu"
    # pixels: the renderer's output stored as round(x * 65535)
    expected, _ = fake_render([], ds.metadata["render_seed"][0], 16)
    assert np.array_equal(item["image"], np.round(expected * 65535) / np.float32(65535))
    for i in range(len(ds)):  # labels are those of the findings as drawn (sides resolved)
        drawn = parse_findings(json.loads(ds.metadata["findings"][i]))
        assert np.array_equal(ds.labels[i], labels_of(drawn))
        assert json.loads(ds.metadata["attributes"][i])["seed"] == ds.metadata["render_seed"][i]
    eff = [i for i, rid in enumerate(ds.metadata["report_id"]) if rid == "CXR2"]
    j = CANONICAL_NAMES.index
    assert all(ds.labels[i, j("effusion_left")] == 1 and ds.labels[i, j("effusion_right")] == 0
               for i in eff)
    # renders of one report differ; templates are flagged
    assert ds.metadata["render_seed"][0] != ds.metadata["render_seed"][1]
    tpl = [i for i, s in enumerate(ds.metadata["source"]) if s == "template"]
    assert len(tpl) == 12 and all(ds.metadata["id"][i].startswith("TPL-") for i in tpl)
    assert all(ds.metadata["id"][i].endswith("#0") for i in tpl)


def test_splits_by_report_share_one_cache(tmp_path: Path):
    every = build(tmp_path)
    calls = CALLS["n"]
    parts = {s: build(tmp_path, split=s) for s in SPLITS}
    assert CALLS["n"] == calls  # the three splits read the cache built for all
    assert sum(len(p) for p in parts.values()) == len(every)
    owners: dict[str, str] = {}
    for s, part in parts.items():
        assert set(part.metadata["split"]) <= {s}
        for rid in part.metadata["report_id"]:
            assert assign_split(rid) == s
            assert owners.setdefault(rid, s) == s  # every render of a report in one split
        if len(part):
            assert part[0]["index"] == 0
    assert {s for s in SPLITS if len(parts[s])} == set(SPLITS)
    val = every.with_split("val")
    assert val.metadata["id"] == parts["val"].metadata["id"]
    assert np.array_equal(val[0]["image"], parts["val"][0]["image"])
    total = sum(sum(p.label_counts()[n]["positive"] for n in CANONICAL_NAMES)
                for p in parts.values())
    assert total == int(every.labels.sum())


def test_cache_is_built_once_and_reused(tmp_path: Path):
    CALLS["n"] = 0
    first = build(tmp_path)
    assert CALLS["n"] == len(first) and first.renders == len(first)
    folder = first.cache_path
    assert folder is not None and (folder / "DONE").is_file()
    images = np.load(folder / "images.npy", mmap_mode="r")
    assert images.dtype == np.uint16 and images.shape == (len(first), 16, 16)
    assert len((folder / "meta.jsonl").read_text().splitlines()) == len(first)
    assert json.loads((folder / "meta.json").read_text())["rows"] == len(first)
    CALLS["n"] = 0
    again = build(tmp_path)
    assert CALLS["n"] == 0 and again.renders == 0 and again.cache_path == folder
    assert np.array_equal(again[3]["image"], first[3]["image"])
    assert again.metadata["id"] == first.metadata["id"]
    blob = pickle.dumps(again)  # a DataLoader worker under spawn maps the file itself
    assert len(blob) < images.nbytes
    assert np.array_equal(pickle.loads(blob)[3]["image"], first[3]["image"])
    other = build(tmp_path, size=24)  # another size is another cache
    assert CALLS["n"] == len(other) and other.cache_path != folder
    assert other[0]["image"].shape == (24, 24)


def test_interrupted_build_leaves_no_cache(tmp_path: Path):
    calls = {"n": 0}

    def failing(findings, seed, size):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("renderer died")
        return fake_render(findings, seed, size)

    failing.RENDERER_VERSION = "fake-1"  # the same cache key as fake_render
    with pytest.raises(RuntimeError, match="renderer died"):
        build(tmp_path, renderer=failing)
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.is_dir()]  # no cache, no temp folder left
    CALLS["n"] = 0
    ds = build(tmp_path)  # a rerun builds it whole
    assert CALLS["n"] == len(ds) and (ds.cache_path / "DONE").is_file()


def test_max_reports_stats_and_memory_mode(tmp_path: Path):
    ds = build(tmp_path, max_reports=3, templates_per_finding=0, cache_dir=None)
    assert ds.cache_path is None
    assert ds.metadata["report_id"] == ["CXR1", "CXR1", "CXR2", "CXR2", "CXR3", "CXR3"]
    st = ds.stats
    assert st["reports"]["total"] == 40 and st["reports"]["used"] == 3
    assert st["reports"]["excluded_by"] == {"Fractures, Bone": 5, "not indexed": 5}
    assert st["reports"]["included"] == 30 and st["reports"]["excluded"] == 10
    assert st["renders"] == 6 and st["templates"] == 0 and st["rows"] == 6
    per_split = st["positives"]
    assert sum(per_split[s]["iu"]["cardiomegaly"] for s in SPLITS) == 0
    assert sum(per_split[s]["iu"]["effusion"] for s in SPLITS) == 2
    assert ds.label_counts()["no_finding"] == {"positive": 2, "negative": 4, "unknown": 0}


def test_bad_options_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="split"):
        build(tmp_path, split="dev")
    with pytest.raises(ConfigError, match="fractions"):
        build(tmp_path, fractions=[0.5, 0.1, 0.1])
    with pytest.raises(ConfigError, match="renderer"):
        build(tmp_path, renderer="no_such_module_here:render")
    with pytest.raises(ConfigError, match="efusion"):
        build(tmp_path, extra_templates={"efusion/left": 3})
    with pytest.raises(ConfigError, match="-3 must be >= 0"):
        build(tmp_path, extra_templates={"effusion/left": -3})
    with pytest.raises(ConfigError, match="co-finding probability -0.1"):
        build(tmp_path, extra_templates={"effusion/left": 3}, extra_co_finding=-0.1)


def test_extra_templates_add_rows_in_their_own_cache(tmp_path: Path):
    plain = build(tmp_path)
    assert build(tmp_path, extra_templates={}).cache_path == plain.cache_path
    more = build(tmp_path, extra_templates={"effusion/right": 4})
    assert more.cache_path != plain.cache_path and len(more) == len(plain) + 4
    added = [i for i, rid in enumerate(more.metadata["report_id"]) if rid.startswith("TPL-x-")]
    assert len(added) == 4 and "extra_templates" in repr(more)
    # the co-finding chance is part of the cache key only when set
    assert build(tmp_path, extra_templates={"effusion/right": 4},
                 extra_co_finding=None).cache_path == more.cache_path
    paired = build(tmp_path, extra_templates={"effusion/right": 4}, extra_co_finding=1.0)
    assert paired.cache_path != more.cache_path and "extra_co_finding=1.0" in repr(paired)
    rows = [i for i, rid in enumerate(paired.metadata["report_id"]) if rid.startswith("TPL-x-")]
    others = [k for k, n in enumerate(CANONICAL_NAMES) if not n.startswith("effusion")]
    assert all(paired.labels[i, others].sum() >= 1 for i in rows)  # a second finding each
    j = CANONICAL_NAMES.index
    for i in added:
        assert more.labels[i, j("effusion_right")] == 1


def test_hydra_config_instantiates(tmp_path: Path):
    tgz = make_tgz(tmp_path / "NLMCXR_reports.tgz", make_reports(16))
    cfg = compose("train_lm", ["data=phantom_iu", f"data.reports={tgz}",
                               f"data.cache_dir={tmp_path / 'cache'}", "data.size=16",
                               "data.renders_per_report=1", "data.templates_per_finding=0",
                               "data.progress=false",
                               f"data.renderer={FAKE_RENDERER}"])
    assert cfg.data.name == "phantom_iu" and cfg.data.split == "train"
    val = hydra.utils.instantiate(cfg.data, split="val")
    train = hydra.utils.instantiate(cfg.data)
    assert isinstance(val, PhantomIU) and val.split == "val" and train.split == "train"
    assert set(val.metadata["split"]) <= {"val"} and set(train.metadata["split"]) == {"train"}
    assert val.cache_path == train.cache_path
    assert train[0]["report"].startswith("Impression")
    default = compose("train_lm", ["data=phantom_iu"])
    assert default.data.cache_dir.endswith("/phantom_iu") and default.data.size == 128


# ---------------------------------------------------------------------------------------------
# the real renderer on the real reports

needs_reports = pytest.mark.skipif(
    sources.status("iu_reports") != "cached",
    reason="the IU reports are not in the data cache: run `biomed data fetch iu_reports`",
)


@pytest.mark.data
@needs_reports
def test_real_renderer_on_real_reports(tmp_path: Path):
    pytest.importorskip("biomed.imaging.phantom.render")
    ds = PhantomIU(size=32, renders_per_report=1, templates_per_finding=1, max_reports=20,
                   cache_dir=tmp_path / "cache", progress=False)
    assert len(ds) == 20 + 12 and ds.stats["reports"]["total"] == 3955
    assert set(ds.metadata["source"]) == {"iu", "template"}
    j = CANONICAL_NAMES.index
    for i in range(len(ds)):
        item = ds[i]
        img = item["image"]
        assert img.shape == (32, 32) and img.dtype == np.float32 and img.std() > 0.01
        drawn = ds.findings(i)
        assert np.array_equal(item["labels"], labels_of(drawn))
        for parent in ("effusion", "pneumothorax"):  # the renderer resolved every side
            if item["labels"][j(parent)] == 1:
                assert item["labels"][j(f"{parent}_left")] + \
                    item["labels"][j(f"{parent}_right")] >= 1
        assert isinstance(json.loads(ds.metadata["attributes"][i]), dict)
    again = PhantomIU(size=32, renders_per_report=1, templates_per_finding=1, max_reports=20,
                      cache_dir=tmp_path / "cache", progress=False, split="test")
    assert again.renders == 0


def test_render_processes_give_the_same_set_as_one_process(tmp_path: Path):
    serial = build(tmp_path / "a", workers=1, renders_per_report=3)
    forked = build(tmp_path / "b", workers=2, renders_per_report=3)
    assert len(serial) >= 64  # enough jobs for the process pool to be used
    assert np.array_equal(np.asarray(serial._images), np.asarray(forked._images))
    assert serial.metadata.to_dicts() == forked.metadata.to_dicts()
