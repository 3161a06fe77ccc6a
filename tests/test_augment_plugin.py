"""biomed.augment.plugin: `SyntheticAugmented` over a contract dataset and a torchvision-style
one, with a fake generator (images from a hash of prompt and seed) and once with a tiny real
pipeline; and the example of docs/augment.md run as written."""

from __future__ import annotations

import pickle
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from biomed.augment.plugin import SyntheticAugmented
from biomed.errors import ConfigError
from biomed.imaging.data.contract import Table, XrayDataset
from biomed.imaging.diffusion.sample import Samples

DOC = Path(__file__).parents[1] / "docs" / "augment.md"
DOC_HEADING = "## The plugin"

NAMES = ["effusion", "effusion_left", "cardiomegaly"]
REPORTS = {"Small left pleural effusion.": [1, 1, 0], "The heart is enlarged.": [0, 0, 1],
           "No acute abnormality.": [0, 0, 0]}


class FakeGenerator:
    """A `Generator` without a model: each image is a seeded draw from (prompt, seed), at
    ``size`` px; prompts with "noise" in them come out flagged diverged. Counts its calls."""

    batch_size = 4

    def __init__(self, size: int = 24, gid: str = "fake-v1"):
        self.size, self.id = size, gid
        self.calls = 0

    def __call__(self, prompts: list[str], seeds: list[int]) -> Samples:
        self.calls += 1
        images = np.stack([
            np.random.default_rng([int(s), zlib.crc32(p.encode())])
            .random((self.size, self.size), dtype=np.float32)
            for p, s in zip(prompts, seeds, strict=True)])
        return Samples(images, np.array(["noise" in p for p in prompts]))

    def provenance(self, prompt: str, seed: int) -> dict:
        return {"prompt": prompt, "seed": int(seed), "model_id": f"fake model {self.id}"}


class Reports(XrayDataset):
    """A small dataset of the contract: report text, a side column, 16 px images."""

    name = "reports"
    item_columns = ("patient_id",)

    def __init__(self, n: int = 6, blank: bool = False):
        texts = [list(REPORTS)[i % 3] for i in range(n)]
        meta = Table({"id": [f"r{i}" for i in range(n)],
                      "patient_id": [f"p{i // 2}" for i in range(n)],
                      "split": ["train"] * n, "report": [""] * n if blank else texts})
        super().__init__(meta, np.array([REPORTS[t] for t in texts]), NAMES, split="train")
        self._images = np.random.default_rng(0).random((n, 16, 16), dtype=np.float32)

    def image(self, index: int) -> np.ndarray:
        return self._images[index]


class Pairs(Dataset):
    """A torchvision-style dataset: (transform(PIL "L" image), label tensor) pairs, 20 px."""

    def __init__(self, n: int = 8, transform=None, numpy_labels: bool = False):
        rng = np.random.default_rng(1)
        self.images = [Image.fromarray(rng.integers(0, 256, (20, 20), np.uint8))
                       for _ in range(n)]
        labels = rng.integers(0, 2, (n, 2)).astype(np.float32)
        self.labels = labels if numpy_labels else torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.labels[i]


PROMPTS = ["Left pleural effusion.", "Enlarged heart.", "Clear lungs."]
PROMPT_LABELS = [[1, 0], [0, 1], [0, 0]]


def _tv_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(20), transforms.ToTensor()])


def _synthetic_images(ds: SyntheticAugmented) -> np.ndarray:
    return np.stack([ds.image(j) for j in range(ds.n_synthetic)])


# ---------------------------------------------------------------------------------------------
# lengths, ratio, nesting


def test_lengths_and_real_items_untouched():
    real = Reports(6)
    gen = FakeGenerator()
    ds = SyntheticAugmented(real, ratio=1.5, generator=gen)
    assert (ds.n_real, ds.n_planned, ds.n_synthetic, len(ds)) == (6, 9, 9, 15)
    assert gen.calls == 3  # 9 images in batches of 4
    for i in range(6):
        a, b = ds[i], real[i]
        assert a.keys() == b.keys() and a["id"] == b["id"]
        assert np.array_equal(a["image"], b["image"]) and "synthetic" not in a
    assert ds[-1]["id"] == "synthetic-8" and ds[-1]["index"] == 14
    assert ds.is_synthetic(6) and not ds.is_synthetic(5)
    with pytest.raises(IndexError):
        ds[15]
    assert len(SyntheticAugmented(real, ratio=0.5, generator=FakeGenerator())) == 6 + 3


def test_ratio_zero_is_the_dataset_and_needs_no_generator():
    real = Reports(6)
    gen = FakeGenerator()
    assert len(SyntheticAugmented(real, ratio=0, generator=gen)) == 6 and gen.calls == 0
    ds = SyntheticAugmented(real, ratio=0)
    assert len(ds) == 6 and ds.n_synthetic == 0 and ds.source_id is None
    with pytest.raises(ConfigError, match="generator=.*cache_dir="):
        SyntheticAugmented(real, ratio=1)


def test_ratio_one_is_the_start_of_ratio_four():
    real = Reports(6)
    one = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(), seed=3)
    four = SyntheticAugmented(real, ratio=4, generator=FakeGenerator(), seed=3)
    assert (one.n_synthetic, four.n_synthetic) == (6, 24)
    assert np.array_equal(_synthetic_images(one), _synthetic_images(four)[:6])
    assert one.synthetic_reports == four.synthetic_reports[:6]
    np.testing.assert_array_equal(one.synthetic_labels, four.synthetic_labels[:6])
    # past the pool (3 distinct reports, 6 rows) the prompts repeat with new image seeds
    assert len({four.provenance(j)["image_seed"] for j in range(24)}) == 24
    other = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(), seed=4)
    assert not np.array_equal(_synthetic_images(one), _synthetic_images(other))


def test_balanced_policy_puts_rare_prompts_early():
    prompts = [f"Report {i}." for i in range(40)]
    labels = np.zeros((40, 2), np.float32)
    labels[7, 0] = 1  # one rare positive: repeat factor sqrt(0.2 / (1 / 40)) = 2.8
    real = Pairs(40, _tv_transform())
    rank: dict[str, list[int]] = {"pool": [], "balanced": []}
    for policy, ranks in rank.items():
        for seed in range(10):
            ds = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(size=4), seed=seed,
                                    prompts=prompts, prompt_labels=labels, label_names=["x", "y"],
                                    policy=policy, image_size=4)
            ranks.append(ds.synthetic_reports.index("Report 7."))  # each prompt once
    # uniform: mean rank about 20 of 40; weight 2.8: about 40 / 3.8
    assert np.mean(rank["balanced"]) < np.mean(rank["pool"]) - 10, rank


# ---------------------------------------------------------------------------------------------
# item formats


def test_dict_items_of_a_contract_dataset():
    real = Reports(6)
    ds = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(size=24))
    assert ds.output == "dict" and ds.label_names == NAMES
    item = ds[6]
    assert list(item) == list(real[0])  # the same keys, so that batches collate
    assert item["image"].dtype == np.float32 and item["image"].shape == (16, 16)  # resized
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["id"] == "synthetic-0" and item["index"] == 6
    assert item["patient_id"].startswith("syn:")
    want = np.array(REPORTS[item["report"]], np.float32)
    want[1] = np.nan  # a side column is unknown for a generated image
    np.testing.assert_array_equal(item["labels"], want)
    batch = default_collate([ds[0], ds[7], ds[1]])
    assert batch["image"].shape == (3, 16, 16) and list(batch["index"]) == [0, 7, 1]
    # the labels are the dataset's own, in its order; its rows must have report text
    with pytest.raises(ConfigError, match="carry .'effusion', 'effusion_left', 'cardiomegaly'"):
        SyntheticAugmented(real, ratio=1, generator=FakeGenerator(),
                           label_names=["cardiomegaly", "effusion", "effusion_left"])
    with pytest.raises(ConfigError, match="no row has report text"):
        SyntheticAugmented(Reports(6, blank=True), ratio=1, generator=FakeGenerator())


def test_dict_transform_and_image_size():
    ds = SyntheticAugmented(Reports(6), ratio=1, generator=FakeGenerator(), image_size=(8, 12),
                            transform=lambda x: torch.from_numpy(x)[None] * 2)
    item = ds[6]
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (1, 8, 12)
    assert float(item["image"].max()) > 1  # the transform ran


def test_tuple_items_with_a_torchvision_transform_and_prompt_labels():
    tf = _tv_transform()
    real = Pairs(8, tf)
    ds = SyntheticAugmented(real, ratio=0.5, generator=FakeGenerator(size=32), prompts=PROMPTS,
                            prompt_labels=PROMPT_LABELS, label_names=["effusion", "cardio"],
                            transform=tf, image_format="pil")
    assert ds.output == "tuple" and len(ds) == 12
    x, y = ds[8]
    assert isinstance(x, torch.Tensor) and x.shape == (1, 20, 20) and x.dtype == torch.float32
    assert y.dtype == torch.float32
    assert y.tolist() == PROMPT_LABELS[PROMPTS.index(ds.synthetic_reports[0])]
    # the PIL image is 8-bit "L" of the synthetic image (at the dataset's 20 px)
    ds.transform = None
    pil, _ = ds[8]
    assert pil.mode == "L" and pil.size == (20, 20)
    assert np.abs(np.asarray(pil) / 255.0 - ds.image(0)).max() <= 0.5 / 255 + 1e-6
    ds.transform = tf
    images, labels = default_collate([ds[0], ds[9], ds[1]])
    assert images.shape == (3, 1, 20, 20) and labels.shape == (3, 2)


def test_tuple_items_as_tensors_follow_the_real_labels_type():
    real = Pairs(8, _tv_transform(), numpy_labels=True)
    ds = SyntheticAugmented(real, ratio=0.5, generator=FakeGenerator(size=20), prompts=PROMPTS,
                            prompt_labels=PROMPT_LABELS, label_names=["a", "b"])
    x, y = ds[8]
    assert isinstance(x, torch.Tensor) and x.shape == (1, 20, 20)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32


def test_prompt_and_label_errors():
    real = Pairs(8, _tv_transform())
    gen = FakeGenerator()
    with pytest.raises(ConfigError, match="prompts=.*prompt_labels="):
        SyntheticAugmented(real, ratio=1, generator=gen)
    with pytest.raises(ConfigError, match="needs prompt_labels=.*no reader"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts=PROMPTS)
    with pytest.raises(ConfigError, match="needs label_names"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts=PROMPTS,
                           prompt_labels=PROMPT_LABELS)
    with pytest.raises(ConfigError, match=r"shape \(3, 3\).*expected \(3, 2\)"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts=PROMPTS,
                           prompt_labels=np.zeros((3, 3)), label_names=["a", "b"])
    with pytest.raises(ConfigError, match="labels have shape .2,. but label_names has 3"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts=PROMPTS,
                           prompt_labels=np.zeros((3, 3)), label_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts=["a", " "],
                           prompt_labels=[[0, 1], [1, 0]], label_names=["a", "b"])
    with pytest.raises(ConfigError, match="a list of report texts"):
        SyntheticAugmented(real, ratio=1, generator=gen, prompts="Left pleural effusion.",
                           prompt_labels=[[1, 0]], label_names=["a", "b"])
    with pytest.raises(ConfigError, match="policy='targeted'"):
        SyntheticAugmented(real, ratio=1, generator=gen, policy="targeted")
    with pytest.raises(ConfigError, match="ratio=-1"):
        SyntheticAugmented(real, ratio=-1, generator=gen)
    assert gen.calls == 0


# ---------------------------------------------------------------------------------------------
# the cache


def test_a_second_construction_reuses_the_cache(tmp_path):
    real = Reports(6)
    first = SyntheticAugmented(real, ratio=4, generator=FakeGenerator(), cache_dir=tmp_path)
    assert first.cache_stats["generated"] == 24 and first.cache_folder.parent == tmp_path
    assert first.source_id == "diffusion-fake-v1"
    for ratio in (4, 1):
        gen = FakeGenerator()
        again = SyntheticAugmented(real, ratio=ratio, generator=gen, cache_dir=tmp_path)
        assert gen.calls == 0 and again.cache_stats["from_cache"] == 6 * ratio
        assert np.array_equal(_synthetic_images(again), _synthetic_images(first)[:6 * ratio])
    # another generator id is another folder: its images are made
    other = FakeGenerator(gid="fake-v2")
    SyntheticAugmented(real, ratio=1, generator=other, cache_dir=tmp_path)
    assert other.calls > 0


def test_cache_only_mode(tmp_path):
    real = Reports(6)
    made = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(), cache_dir=tmp_path)
    ds = SyntheticAugmented(real, ratio=1, cache_dir=tmp_path)
    assert ds.source_id == made.source_id
    assert np.array_equal(_synthetic_images(ds), _synthetic_images(made))
    assert ds.provenance(2) == made.provenance(2)
    with pytest.raises(ConfigError, match=r"diffusion-fake-v1: 18 of the 24 planned"):
        SyntheticAugmented(real, ratio=4, cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no generator's source folder"):
        SyntheticAugmented(real, ratio=1, cache_dir=tmp_path / "empty")
    SyntheticAugmented(real, ratio=1, generator=FakeGenerator(gid="other"), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="several source folders"):
        SyntheticAugmented(real, ratio=1, cache_dir=tmp_path)
    picked = SyntheticAugmented(real, ratio=1, cache_dir=tmp_path, source_id="diffusion-other")
    assert picked.n_synthetic == 6
    with pytest.raises(ConfigError, match="no such folder"):
        SyntheticAugmented(real, ratio=1, cache_dir=tmp_path / "absent")


def test_diverged_images_are_dropped_and_provenance_is_kept():
    real = Pairs(8, _tv_transform())
    prompts = ["Left pleural effusion.", "noise noise", "Clear lungs."]
    ds = SyntheticAugmented(real, ratio=2, generator=FakeGenerator(), prompts=prompts,
                            prompt_labels=PROMPT_LABELS, label_names=["a", "b"],
                            transform=_tv_transform(), image_format="pil")
    assert ds.n_planned == 16 and ds.dropped_diverged > 0
    assert ds.n_synthetic == 16 - ds.dropped_diverged and len(ds) == 8 + ds.n_synthetic
    assert "noise noise" not in ds.synthetic_reports
    p = ds.provenance(0)
    assert p["model_id"] == "fake model fake-v1" and p["source"] == "diffusion"
    assert p["prompt"] == ds.synthetic_reports[0] and p["seed"] == p["image_seed"]
    assert p["diverged"] is False and ds.summary()["dropped_diverged"] == ds.dropped_diverged


def test_dataloader_with_two_workers_and_pickling():
    real = Pairs(8, _tv_transform())
    ds = SyntheticAugmented(real, ratio=1, generator=FakeGenerator(), prompts=PROMPTS,
                            prompt_labels=PROMPT_LABELS, label_names=["a", "b"],
                            transform=_tv_transform(), image_format="pil")
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[12][0], ds[12][0]) and not hasattr(copy, "generator")
    seen = 0
    for images, labels in DataLoader(ds, batch_size=5, shuffle=True, num_workers=2,
                                     generator=torch.Generator().manual_seed(0)):
        assert images.shape[1:] == (1, 20, 20) and labels.shape[1] == 2
        seen += len(images)
    assert seen == len(ds) == 16


# ---------------------------------------------------------------------------------------------
# a real (tiny) pipeline, and the documented example


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from tests.helpers.diffusion import tiny_sd_folder

    return tiny_sd_folder(tmp_path_factory.mktemp("plugin") / "sd")


def test_with_a_tiny_pipeline(tiny_pipeline, tmp_path):
    from biomed.imaging.diffusion.sample import PipelineGenerator

    gen = PipelineGenerator(tiny_pipeline, {"steps": 2, "batch_size": 4}, "cpu")
    real = Pairs(4, _tv_transform())
    ds = SyntheticAugmented(real, ratio=0.75, generator=gen, cache_dir=tmp_path,
                            prompts=PROMPTS[:2], prompt_labels=PROMPT_LABELS[:2],
                            label_names=["a", "b"], image_format="pil",
                            transform=_tv_transform())
    assert ds.source_id == f"diffusion-{gen.id}" and ds.n_planned == 3
    assert ds.n_synthetic + ds.dropped_diverged == 3
    images = _synthetic_images(ds)
    assert images.shape[1:] == (20, 20) and np.isfinite(images).all()
    assert ds.provenance(0)["model_id"] == gen.model_id
    assert (tmp_path / ds.source_id / "source.json").is_file()


def doc_example(path: Path) -> str | None:
    """The first ```python block of the plugin section of ``path`` (None: no such section, or
    no block in it yet)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    match = re.search(rf"^{re.escape(DOC_HEADING)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    block = re.search(r"^```python\n(.*?)^```", match.group(1), re.M | re.S) if match else None
    return block.group(1) if block else None


def test_the_documented_example_runs_as_written(tiny_pipeline, tmp_path, monkeypatch):
    code = doc_example(DOC)
    if code is None:
        pytest.skip(f"{DOC}: no ```python block under {DOC_HEADING!r} yet")
    monkeypatch.setenv("BIOMED_PIPELINE", str(tiny_pipeline))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own example
    made = [v for v in namespace.values() if isinstance(v, SyntheticAugmented)]
    assert made and all(d.n_synthetic > 0 for d in made)
