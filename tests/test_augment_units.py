"""The pure pieces of `biomed.augment`: subsets, orders, prompt pools, plans, oracle seeds, the
synthetic cache, the oracle source, the synthetic dataset and resizing (no training, no data
fetched: small in-memory datasets of the contract)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomed.augment.cache import Request, SyntheticCache, item_key
from biomed.augment.cell import Cell
from biomed.augment.prompts import prompt_pool, repeat_weights
from biomed.augment.sources import OracleSource, findings_key, oracle_seed
from biomed.augment.subsets import hashed_order, real_subset, unit_hash, weighted_order
from biomed.augment.sweep import plan_cells
from biomed.augment.synthetic import build_synthetic, plan, requests, resize
from biomed.errors import ConfigError
from biomed.imaging.core.findings import labels_of, parse_findings
from biomed.imaging.core.labels import CANONICAL_NAMES, SIDED
from biomed.imaging.data.contract import Table, XrayDataset

SIDE_COLUMNS = {c for pair in SIDED.values() for c in pair}

# drawn findings (sides resolved, as a phantom dataset stores them), one list per report
FINDINGS = [
    [],
    [{"name": "cardiomegaly", "severity": 2}],
    [{"name": "effusion", "side": "left", "severity": 2}],
    [{"name": "effusion", "side": "right", "severity": 1},
     {"name": "cardiomegaly", "severity": 3}],
    [{"name": "pneumothorax", "side": "left", "severity": 2}],
    [{"name": "nodule", "side": "right", "severity": 1, "zone": "upper"}],
]


class Rows(XrayDataset):
    """A tiny phantom-like dataset: two renders per report, each its own row."""

    name = "rows"
    _row_attrs = ("labels", "_slot")

    def __init__(self, findings=FINDINGS, renders: int = 2, reports: bool = True,
                 size: int = 8):
        rows = [(r, k) for r in range(len(findings)) for k in range(renders)]
        cols = {"id": [f"R{r}#{k}" for r, k in rows], "patient_id": [f"R{r}" for r, _ in rows],
                "split": ["train"] * len(rows), "render_seed": [100 * r + k for r, k in rows],
                "findings": [json.dumps(findings[r]) for r, _ in rows]}
        if reports:
            cols["report"] = [f"report {r}" for r, _ in rows]
        labels = np.stack([labels_of(parse_findings(findings[r])) for r, _ in rows])
        super().__init__(Table(cols), labels, CANONICAL_NAMES, split="train")
        rng = np.random.default_rng(0)
        self._images = rng.random((len(rows), size, size)).astype(np.float32)
        self._slot = np.arange(len(rows))

    def image(self, index: int) -> np.ndarray:
        return self._images[int(self._slot[index])]


# ---------------------------------------------------------------------------------------------
# the real subset


def _patients(n: int, per: int = 3) -> list[str]:
    return [f"P{i:04d}" for i in range(n) for _ in range(per)]


def test_real_subset_is_deterministic_and_nested_across_fractions():
    ids = _patients(600)
    rows = {f: set(real_subset(ids, f, seed=3).tolist()) for f in (0.05, 0.1, 0.2, 0.5)}
    assert rows[0.05] < rows[0.1] < rows[0.2] < rows[0.5]  # strict: more patients each time
    assert np.array_equal(real_subset(ids, 0.1, 3), real_subset(list(ids), 0.1, 3))
    idx = real_subset(ids, 0.1, 3)
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64  # ascending row indices
    # close to, not exactly, the fraction
    assert 0.06 < len(idx) / len(ids) < 0.14


def test_real_subset_keeps_every_row_of_a_patient_together():
    rng = np.random.default_rng(0)
    ids = [f"P{int(i)}" for i in rng.integers(0, 200, 1000)]  # uneven, shuffled rows
    kept = set(real_subset(ids, 0.2, seed=0).tolist())
    inside = {ids[i] for i in kept}
    assert kept == {i for i, p in enumerate(ids) if p in inside}


def test_real_subset_depends_on_the_seed_and_the_id_not_the_position():
    ids = _patients(400, per=1)
    a, b = real_subset(ids, 0.2, 0), real_subset(ids, 0.2, 1)
    assert set(a.tolist()) != set(b.tolist())
    # the same patients whatever the row order (a hash of the id, not of the position)
    rev = ids[::-1]
    assert {ids[i] for i in a} == {rev[i] for i in real_subset(rev, 0.2, 0)}
    assert {ids[i] for i in a} == {p for p in ids if unit_hash("real", 0, p) < 0.2}


def test_real_subset_at_one_is_everything_and_bad_fractions_fail():
    ids = _patients(5)
    assert real_subset(ids, 1.0, 7).tolist() == list(range(len(ids)))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="real_fraction"):
            real_subset(ids, bad, 0)


# ---------------------------------------------------------------------------------------------
# synthetic orders


def test_hashed_order_is_a_seeded_permutation_consistent_across_pools():
    keys = [f"k{i}" for i in range(50)]
    order = hashed_order(keys, seed=1)
    assert sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, hashed_order(keys, seed=1))
    assert not np.array_equal(order, hashed_order(keys, seed=2))
    assert not np.array_equal(order, hashed_order(keys, seed=1, salt="other"))
    # ranks keys by their own hash: any sub-pool keeps the full pool's relative order
    sub = keys[::3]
    full_rank = [keys[i] for i in order if keys[i] in set(sub)]
    assert [sub[i] for i in hashed_order(sub, seed=1)] == full_rank


def test_weighted_order_brings_heavy_items_early():
    keys = [f"k{i}" for i in range(2000)]
    weights = np.where(np.arange(2000) % 2 == 0, 10.0, 1.0)  # even keys 10x heavier
    order = weighted_order(keys, weights, seed=0)
    assert sorted(order.tolist()) == list(range(2000))
    assert np.array_equal(order, weighted_order(keys, weights, seed=0))
    early = order[:200]
    assert np.mean(early % 2 == 0) > 0.8  # ~10/11 expected among the first picks
    assert np.mean(order[-200:] % 2 == 0) < 0.3


@pytest.mark.parametrize("weights", [[1.0, 0.0], [1.0, -1.0], [1.0, np.nan], [1.0]])
def test_weighted_order_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="positive finite weight"):
        weighted_order(["a", "b"], weights, seed=0)


def test_repeat_weights_are_lvis_repeat_factors_of_the_rarest_positive():
    y = np.zeros((10, 3), np.float32)
    y[:5, 0] = 1  # share 0.5: factor sqrt(0.2 / 0.5) < 1 -> 1
    y[0, 1] = 1  # share 0.1: factor sqrt(2)
    y[1, 2] = 1  # share 0.1 too
    y[2, 2] = np.nan  # unknown counts as negative
    w = repeat_weights(y, threshold=0.2)
    assert w[0] == pytest.approx(np.sqrt(2.0))  # its rarest finding decides
    assert w[1] == pytest.approx(np.sqrt(2.0))
    assert np.all(w[2:] == 1.0)
    assert repeat_weights(y, threshold=0.8)[3] == pytest.approx(np.sqrt(0.8 / 0.5))
    assert np.all(repeat_weights(np.zeros((4, 2))) == 1.0)


# ---------------------------------------------------------------------------------------------
# prompt pools


def test_prompt_pool_train_and_subset():
    train = Rows()
    subset = train.subset(real_subset(train.patient_ids, 0.5, 0))
    pool = prompt_pool("train", "pool", train, subset)
    assert pool.keys == list(train.ids) and pool.texts == train.reports()
    assert pool.findings == [json.loads(f) for f in train.metadata["findings"]]
    assert np.array_equal(pool.labels, train.labels) and pool.label_names == train.label_names
    assert np.all(pool.weights == 1) and "12 rows, 6 reports" in pool.description
    own = prompt_pool("subset", "pool", train, subset)
    assert own.keys == list(subset.ids) and len(own) == len(subset) < len(train)
    assert "the cell's real subset" in own.description


def test_prompt_pool_balanced_weights_rare_rows():
    train = Rows()
    pool = prompt_pool("train", "balanced", train, train, repeat_threshold=0.5)
    assert np.allclose(pool.weights, repeat_weights(train.labels, 0.5))
    assert pool.weights.max() > 1.0 and "repeat factors" in pool.description


def test_prompt_pool_targeted_templates_carry_their_findings_labels():
    train = Rows()
    pool = prompt_pool("train", "targeted", train, train,
                       targeted_findings=["cardiomegaly", "pneumothorax"], targeted_per_finding=3)
    assert len(pool) == 6 and all(k.startswith("TPL-") for k in pool.keys)
    assert pool.label_names == train.label_names
    col = {n: j for j, n in enumerate(pool.label_names)}
    assert pool.labels[:3, col["cardiomegaly"]].tolist() == [1, 1, 1]
    assert pool.labels[3:, col["pneumothorax"]].tolist() == [1, 1, 1]
    for lab, found in zip(pool.labels, pool.findings, strict=True):
        assert np.array_equal(lab, labels_of(parse_findings(found)))


def test_prompt_pool_errors_name_the_setting():
    train = Rows()
    with pytest.raises(ConfigError, match="prompts.pool='nope'"):
        prompt_pool("nope", "pool", train, train)
    with pytest.raises(ConfigError, match="prompts.policy='nope'"):
        prompt_pool("train", "nope", train, train)
    for bad in (["unicorn"], []):
        with pytest.raises(ConfigError, match="prompts.targeted_findings"):
            prompt_pool("train", "targeted", train, train, targeted_findings=bad)
    no_text = Rows(reports=False)
    with pytest.raises(ConfigError, match="rows: its rows have no report text"):
        prompt_pool("train", "pool", no_text, no_text)
    odd = Rows()
    odd.label_names = ["a" + n for n in odd.label_names]
    with pytest.raises(ConfigError, match="not canonical names"):
        prompt_pool("train", "targeted", odd, odd, targeted_findings=["cardiomegaly"])


def test_text_labels_mark_side_columns_unknown():
    pool = prompt_pool("train", "pool", Rows(), Rows())
    text = pool.text_labels
    for j, name in enumerate(pool.label_names):
        if name in SIDE_COLUMNS:
            assert np.all(np.isnan(text[:, j])), name
        else:
            assert np.array_equal(text[:, j], pool.labels[:, j]), name
    assert not np.isnan(pool.labels).any()  # the exact labels are left as they were
    assert {"effusion_left", "pneumothorax_right"} <= SIDE_COLUMNS


# ---------------------------------------------------------------------------------------------
# plans and oracle seeds


@pytest.mark.parametrize("policy", ["pool", "balanced"])
def test_plan_is_nested_in_n(policy):
    pool = prompt_pool("train", policy, Rows(), Rows())
    for n in (1, 5, 12, 30):  # 30 > the pool: the order repeats with new seeds
        assert plan(pool, n, 0, policy)[:n] == plan(pool, 4 * n, 0, policy)[:n]
    big = plan(pool, 30, 0, policy)
    assert len({p.seed for p in big}) == 30  # every item its own image seed
    assert sorted({p.prompt for p in big[:12]}) == list(range(12))  # the pool once, first
    assert plan(pool, 0, 0) == [] and plan(pool, -1, 0) == []
    assert plan(pool, 12, 0, policy) != plan(pool, 12, 1, policy)


def test_oracle_seeds_avoid_a_given_set():
    assert oracle_seed(0, 5) == oracle_seed(0, 5) and oracle_seed(0, 5) != oracle_seed(0, 6)
    first = [oracle_seed(0, k) for k in range(20)]
    assert all(0 <= s < 2**31 for s in first)
    avoid = frozenset(first[::2])
    again = [oracle_seed(0, k, avoid) for k in range(20)]
    assert not set(again) & avoid
    assert again[1::2] == first[1::2]  # only the colliding ones are redrawn
    pool = prompt_pool("train", "pool", Rows(), Rows())
    planned = plan(pool, 20, 0, avoid_seeds=frozenset(first))
    assert not {p.seed for p in planned} & set(first)


# ---------------------------------------------------------------------------------------------
# the synthetic cache


class FakeMaker:
    """Makes flat images (value by seed) and flags seeds in ``diverge``; counts its calls."""

    def __init__(self, size: int = 6, diverge: frozenset[int] = frozenset()):
        self.size, self.diverge, self.made = size, diverge, 0

    def __call__(self, batch):
        self.made += len(batch)
        images = np.stack([np.full((self.size, self.size), (r.seed % 100) / 100, np.float32)
                           for r in batch])
        return images, np.array([r.seed in self.diverge for r in batch])

    @staticmethod
    def provenance(r):
        return {"source": "fake", "prompt": r.text, "seed": r.seed, "model_id": "fake@1"}


def test_cache_ensure_has_load_and_reuse(tmp_path):
    cache = SyntheticCache(tmp_path, "fake-1", {"source": "fake"})
    reqs = [Request(f"text {i}", 10 + i) for i in range(5)] + [Request("text 0", 10)]
    maker = FakeMaker(diverge=frozenset({12}))
    done: list[int] = []
    stats = cache.ensure(reqs, maker, maker.provenance, batch_size=2, progress=done.append)
    assert stats["requested"] == 5 and stats["generated"] == 5 and stats["from_cache"] == 0
    assert maker.made == 5 and sum(done) == 5 and stats["seconds"] >= 0
    assert all(cache.has(r.key) for r in reqs) and not cache.has(item_key("other", 1))
    images = cache.load([r.key for r in reqs[:3]])
    assert images.shape == (3, 6, 6) and images.dtype == np.float32
    assert np.allclose(images[:, 0, 0], [0.10, 0.11, 0.12], atol=1e-4)  # uint16 round trip
    assert cache.diverged() == {r.key: r.seed == 12 for r in reqs[:5]}
    lines = [json.loads(x) for x in (cache.folder / "manifest.jsonl").read_text().splitlines()]
    assert [x["key"] for x in lines] == [r.key for r in reqs[:5]]
    assert all(x["model_id"] == "fake@1" and "prompt" in x and "seed" in x for x in lines)
    assert json.loads((cache.folder / "source.json").read_text()) == {"source": "fake"}

    # a second cache over the same folder (another cell, sweep or process) makes nothing
    again = SyntheticCache(tmp_path, "fake-1", {"source": "changed"})
    maker2 = FakeMaker()
    stats2 = again.ensure(reqs + [Request("text 9", 99)], maker2, maker2.provenance)
    assert (stats2["generated"], stats2["from_cache"], maker2.made) == (1, 5, 1)
    assert json.loads((cache.folder / "source.json").read_text()) == {"source": "fake"}
    assert cache.load([]).shape[0] == 0


def test_cache_keys_tell_prompts_seeds_and_findings_apart():
    keys = {item_key("a", 1), item_key("a", 2), item_key("b", 1),
            item_key("a", 1, ['{"name": "cardiomegaly"}']), item_key("a", 1, [])}
    assert len(keys) == 5
    assert Request("a", 1).key == item_key("a", 1)


def test_cache_tolerates_a_torn_manifest_line(tmp_path):
    cache = SyntheticCache(tmp_path, "fake-1")
    maker = FakeMaker(diverge=frozenset({1}))
    cache.ensure([Request("a", 1), Request("b", 2)], maker, maker.provenance)
    with open(cache.folder / "manifest.jsonl", "a") as f:
        f.write('{"key": "torn", "sou')  # a build killed mid-line
    fresh = SyntheticCache(tmp_path, "fake-1")
    assert fresh.diverged() == {Request("a", 1).key: True, Request("b", 2).key: False}
    assert fresh.load([Request("a", 1).key]).shape == (1, 6, 6)


def test_cache_keeps_the_next_line_after_a_torn_one(tmp_path):
    cache = SyntheticCache(tmp_path, "fake-1")
    maker = FakeMaker(diverge=frozenset({3}))
    cache.ensure([Request("a", 1)], maker, maker.provenance)
    with open(cache.folder / "manifest.jsonl", "a") as f:
        f.write('{"key": "torn", "sou')
    cache.ensure([Request("c", 3)], maker, maker.provenance)
    assert cache.diverged().get(Request("c", 3).key) is True


# ---------------------------------------------------------------------------------------------
# the oracle source


@pytest.fixture(scope="module")
def oracle() -> OracleSource:
    return OracleSource(32, batch_size=4)


def test_oracle_renders_the_requested_findings(oracle):
    card = [{"name": "cardiomegaly", "severity": 3}]
    eff = [{"name": "effusion", "side": "left", "severity": 3}]
    reqs = [Request("heart", 7, findings_key(card)), Request("fluid", 7, findings_key(eff)),
            Request("clear", 7, findings_key([]))]
    images, diverged = oracle.make(reqs)
    assert images.shape == (3, 32, 32) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and not diverged.any()
    # the same seed with other findings draws another image: the findings are drawn
    assert np.abs(images[0] - images[2]).mean() > 1e-3
    assert np.abs(images[1] - images[2]).mean() > 1e-3
    for r, want in zip(reqs, (card, eff, []), strict=True):
        prov = oracle.provenance(r)
        assert prov["findings"] == [dict(sorted(f.items())) for f in want]
        assert prov["seed"] == 7 and prov["source"] == "phantom_oracle" and prov["size"] == 32
        assert prov["renderer"] == oracle.version
        # labels exact: what the renderer reports drawing is what was asked for
        drawn = parse_findings(json.loads(f) for f in r.findings)
        _, info = oracle.render(drawn, seed=7, size=32)
        assert np.array_equal(labels_of(parse_findings(info["findings"])),
                              labels_of(parse_findings(want)))
    col = CANONICAL_NAMES.index("cardiomegaly")
    assert labels_of(parse_findings(oracle.provenance(reqs[0])["findings"]))[col] == 1
    again, _ = oracle.make(reqs[:1])
    assert np.array_equal(again[0], images[0])  # deterministic in (findings, seed)
    assert oracle.id.startswith("phantom_oracle-") and oracle.id != OracleSource(16).id


# ---------------------------------------------------------------------------------------------
# the synthetic dataset


def _filled(tmp_path, pool, items, source, diverge=frozenset()):
    cache = SyntheticCache(tmp_path, source)
    maker = FakeMaker(size=8, diverge=diverge)
    cache.ensure(requests(pool, items, source), maker, maker.provenance)
    return cache


def test_build_synthetic_labels_ids_and_shuffled_control(tmp_path):
    pool = prompt_pool("train", "pool", Rows(), Rows())
    items = plan(pool, 24, 0)
    cache = _filled(tmp_path, pool, items, "phantom_oracle")
    ds = build_synthetic(pool, items, "phantom_oracle", cache, (8, 8))
    assert len(ds) == 24 and ds.dropped_diverged == 0
    idx = [p.prompt for p in items]
    assert np.array_equal(ds.labels, pool.labels[idx])  # the oracle's labels are exact
    assert list(ds.patient_ids) == [f"syn:{pool.keys[i]}" for i in idx]
    assert ds.reports() == [pool.texts[i] for i in idx]
    assert ds[0]["image"].shape == (8, 8) and ds[0]["source"] == "phantom_oracle"

    shuffled = build_synthetic(pool, items, "phantom_oracle", cache, (8, 8),
                               shuffled_labels=True, label_seed=0)
    perm = [tuple(r) for r in shuffled.labels]
    assert sorted(perm) == sorted(tuple(r) for r in ds.labels)  # the same rows, permuted
    assert not np.array_equal(shuffled.labels, ds.labels)
    assert np.array_equal(np.stack([shuffled.image(i) for i in range(24)]),
                          np.stack([ds.image(i) for i in range(24)]))  # images untouched
    other = build_synthetic(pool, items, "phantom_oracle", cache, (8, 8), shuffled_labels=True,
                            label_seed=1)
    assert not np.array_equal(other.labels, shuffled.labels)


def test_build_synthetic_generated_images_side_columns_unknown_and_diverged_left_out(tmp_path):
    pool = prompt_pool("train", "pool", Rows(), Rows())
    items = plan(pool, 10, 0)
    bad = frozenset({items[3].seed})
    cache = _filled(tmp_path, pool, items, "diffusion", diverge=bad)
    ds = build_synthetic(pool, items, "diffusion", cache, (4, 4))
    assert len(ds) == 9 and ds.dropped_diverged == 1
    assert ds.image(0).shape == (4, 4)
    keep = [p.prompt for p in items if p.seed not in bad]
    assert np.array_equal(ds.labels, pool.text_labels[keep], equal_nan=True)
    sides = [j for j, n in enumerate(ds.label_names) if n in SIDE_COLUMNS]
    assert np.isnan(ds.labels[:, sides]).all()
    # generated images are keyed by prompt and seed only, the oracle's by its findings too
    assert requests(pool, items[:1], "diffusion")[0].findings is None
    assert requests(pool, items[:1], "phantom_oracle")[0].findings is not None


# ---------------------------------------------------------------------------------------------
# resizing and the grid


def test_resize_shapes_and_area_average():
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)).astype(np.float32)
    down = resize(x, (16, 16))
    assert down.shape == (3, 16, 16) and down.dtype == np.float32
    assert np.allclose(down[0, 0, 0], x[0, :2, :2].mean(), atol=1e-6)  # an area average
    assert np.allclose(down.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)
    up = resize(x[:, :8, :8], (16, 16))
    assert up.shape == (3, 16, 16) and up.min() >= 0 and up.max() <= 1
    assert resize(x, (32, 32)) is x
    assert resize(np.zeros((0, 32, 32), np.float32), (16, 16)).shape[0] == 0


def test_plan_cells_and_cell_names():
    grid = {"seeds": [0, 1], "fractions": [0.05], "ratios": [1, 4], "modes": ["mix", "pretrain"],
            "sources": ["diffusion", "phantom_oracle"], "duplicates": ["mix"],
            "shuffled_labels": ["phantom_oracle"], "real_only_fractions": [0.05, 1.0]}
    cells = plan_cells(grid)
    assert len(cells) == len(set(cells)) == 2 * (1 + 2 * 2 * 2 + 2 + 1 + 1)
    names = {c.name for c in cells}
    assert "f0.05-r0-real-none-s0" in names and "f1-r0-real-none-s1" in names
    assert "f0.05-r4-mix-phantom_oracle-shuffled-s0" in names  # the highest ratio, mix
    assert "f0.05-r4-mix-duplicates-s1" in names and "f0.05-r1-pretrain-diffusion-s0" in names
    assert Cell(0.05, 4, "mix", "diffusion", 0).baseline == Cell(0.05, 0, "real", "none", 0)
    with pytest.raises(ConfigError, match="not a synthetic source"):
        plan_cells({**grid, "sources": ["duplicates"]})
    with pytest.raises(ConfigError, match="ratio 0 goes with mode real"):
        Cell(0.05, 0, "mix", "diffusion", 0)
    with pytest.raises(ConfigError, match="cell mode"):
        Cell(0.05, 1, "finetune", "diffusion", 0)
