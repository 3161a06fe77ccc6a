"""`biomed augment` end to end on the smoke grid (debug=smoke: the fetched IU reports as 40
phantoms at 32 px, cells at 16 px): one sweep run once for the module and read by several
tests (cells, steps, cache, results.csv, report), then resumes, the report command, the
diffusion source on a tiny random Stable Diffusion folder, and (slow) the joblib and Ray
launches."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from biomed import sources
from biomed.augment import sweep as augment_sweep
from biomed.augment.cell import Cell
from biomed.augment.report import CSV_COLUMNS
from biomed.augment.report import main as report_main
from biomed.augment.subsets import real_subset
from biomed.config import compose
from biomed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(sources.status("iu_reports") != "cached",
                       reason="the IU reports are not in the data cache: run "
                              "`biomed data fetch iu_reports`"),
]

BASE = Cell(0.5, 0, "real", "none", 0)
ORACLE_MIX = Cell(0.5, 1, "mix", "phantom_oracle", 0)
ORACLE_PRE = Cell(0.5, 1, "pretrain", "phantom_oracle", 0)
DUPLICATES = Cell(0.5, 1, "mix", "duplicates", 0)
FULL = Cell(1.0, 0, "real", "none", 0)
SMOKE_CELLS = [BASE, ORACLE_MIX, ORACLE_PRE, DUPLICATES, FULL]


def augment_cfg(run_dir: Path, cache: Path, *overrides: str):
    return compose("augment", ["debug=smoke", f"paths.run_dir={run_dir}",
                               f"synthetic.cache_dir={cache}", "image_size=16", *overrides])


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _trained_steps(folder: Path) -> int:
    """The last optimizer step of a training log (its train records carry a loss)."""
    return max(r["step"] for r in _lines(folder / "log.jsonl") if "loss" in r)


def _weights_mtimes(sweep_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(sweep_dir)): p.stat().st_mtime_ns
            for p in sorted(sweep_dir.glob("cells/*/**/model.safetensors"))}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke sweep, run once; its printed log kept; the `Sweep` of its folder."""
    root = tmp_path_factory.mktemp("augment")
    cfg = augment_cfg(root / "sweep", root / "cache")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = augment_sweep.run(cfg)
    assert metrics["cells_failed"] == [], metrics["cells_failed"]
    sweep = augment_sweep.Sweep(cfg, root / "sweep")
    return SimpleNamespace(root=root, dir=root / "sweep", cache=root / "cache", cfg=cfg,
                           metrics=metrics, log=out.getvalue(), sweep=sweep)


# ---------------------------------------------------------------------------------------------
# the smoke sweep's folder


def test_every_planned_cell_is_done_with_predictions_and_metrics(smoke):
    plan = json.loads((smoke.dir / "sweep.json").read_text())
    assert [c["name"] for c in plan["cells"]] == [c.name for c in SMOKE_CELLS]
    assert sorted(p.name for p in (smoke.dir / "cells").iterdir()) == \
        sorted(c.name for c in SMOKE_CELLS)
    labels = plan["data"]["labels"]
    for cell in SMOKE_CELLS:
        folder = smoke.dir / "cells" / cell.name
        assert (folder / "DONE").is_file() and (folder / "classifier").is_dir()
        m = json.loads((folder / "metrics.json").read_text())
        assert Cell.from_dict(m["cell"]) == cell
        assert json.loads((folder / "cell.json").read_text())["name"] == cell.name
        with np.load(folder / "predictions.npz") as z:
            assert z["probs"].shape == z["labels"].shape == (plan["data"]["test"], len(labels))
            assert list(z["label_names"]) == labels
            assert len(set(z["clusters"].tolist())) == plan["data"]["test_reports"]
    assert smoke.metrics["cells_planned"] == 5 and smoke.metrics["cells_run"] == 5


def test_real_subsets_validation_and_label_set(smoke):
    from biomed.imaging.classifier.data import estimate_normalization, select_labels

    data = smoke.sweep.data
    full_labels = [data.train.label_names[c] for c in select_labels(data.train, None)]
    plan = json.loads((smoke.dir / "sweep.json").read_text())
    assert plan["data"]["labels"] == full_labels == data.label_names
    subset = real_subset(data.train.patient_ids, 0.5, 0)
    expected_n = {0.5: len(subset), 1.0: len(data.train)}
    assert 0 < len(subset) < len(data.train)
    norm = {}
    for cell in SMOKE_CELLS:
        folder = smoke.dir / "cells" / cell.name
        m = json.loads((folder / "metrics.json").read_text())
        assert m["n_real"] == expected_n[cell.fraction], cell.name
        assert m["n_val"] == plan["data"]["val"] == len(data.val), cell.name  # the whole split
        config = json.loads((folder / "classifier" / "config.json").read_text())
        assert config["labels"] == full_labels, cell.name  # one label set for every cell
        norm.setdefault(cell.fraction, set()).add(
            (config["normalization"]["mean"], config["normalization"]["std"]))
    # normalisation from the real subset, never from the synthetic images
    real = data.subset(0.5, 0)
    sample = int(smoke.sweep.base.classifier.norm.sample)
    assert norm[0.5] == {estimate_normalization(real, sample)}
    assert len(norm[1.0]) == 1 and norm[1.0] != norm[0.5]


def test_steps_are_chosen_once_and_every_cell_trains_S(smoke):
    for fraction, cells in ((0.5, SMOKE_CELLS[:4]), (1.0, [FULL])):
        record = json.loads((smoke.dir / "steps" / f"f{fraction:g}" / "steps.json").read_text())
        S = record["S"]
        curve = record["curve"]
        assert max(curve, key=lambda c: (c[1], -c[0]))[0] == S  # best val AUROC, earliest tie
        assert smoke.metrics["steps"][f"{fraction:g}"] == S  # the command's summary
        for cell in cells:
            folder = smoke.dir / "cells" / cell.name
            m = json.loads((folder / "metrics.json").read_text())
            if cell.mode == "pretrain":
                assert (folder / "pretrain" / "classifier").is_dir()
                assert m["pretrain_steps"] + m["finetune_steps"] == S
                assert _trained_steps(folder / "pretrain") == m["pretrain_steps"] >= 1
                assert _trained_steps(folder) == m["finetune_steps"] >= 1
            else:
                assert _trained_steps(folder) == S, cell.name
            # the best periodic validation checkpoint is the one kept
            vals = [r for r in _lines(folder / "log.jsonl") if "val_macro_auroc" in r]
            best = max(vals, key=lambda r: (r["val_macro_auroc"], -r["step"]))
            assert m["best_step"] == best["step"], cell.name
            assert m["best_val_macro_auroc"] == pytest.approx(best["val_macro_auroc"])


def test_every_cell_records_S_as_its_steps(smoke):
    import pandas as pd

    table = pd.read_csv(smoke.dir / "results.csv")
    for cell in SMOKE_CELLS:
        S = smoke.metrics["steps"][f"{cell.fraction:g}"]
        m = json.loads((smoke.dir / "cells" / cell.name / "metrics.json").read_text())
        assert m["steps"] == S, cell.name
        assert set(table.loc[table["cell"] == cell.name, "steps"]) == {S}, cell.name


def test_cache_is_built_before_the_cells_and_oracle_seeds_avoid_the_renders(smoke):
    log = smoke.log
    assert log.index("phantom_oracle: 20 images, 20 generated") < log.index("5 cells planned")
    record = json.loads((smoke.dir / "synthetic" / "phantom_oracle.json").read_text())
    assert (record["requested"], record["generated"], record["from_cache"]) == (20, 20, 0)
    assert record["seconds"] >= 0 and "label_accuracy" in record
    manifest = _lines(Path(record["cache"]) / "manifest.jsonl")
    assert len(manifest) == 20 and all(x["source"] == "phantom_oracle" for x in manifest)
    data = smoke.sweep.data
    render_seeds = {int(s) for ds in (data.train, data.val, data.test)
                    for s in ds.metadata["render_seed"]}
    assert len(render_seeds) == len(data.train) + len(data.val) + len(data.test)
    assert smoke.sweep.avoid_seeds() == render_seeds  # what the oracle's seeds stay apart from
    assert not {x["seed"] for x in manifest} & render_seeds
    # the oracle draws each prompt row's own drawn findings: its labels are the row's
    syn = smoke.sweep.synthetic_set(ORACLE_MIX)
    pool = smoke.sweep.pool(ORACLE_MIX)
    for i, key in enumerate(syn.patient_ids):
        row = pool.keys.index(key[len("syn:"):])
        assert np.array_equal(syn.labels[i], pool.labels[row])
    assert syn[0]["image"].shape == data.size == (16, 16)


def test_duplicates_are_copies_of_real_rows(smoke):
    real = smoke.sweep.data.subset(0.5, 0)
    dup = smoke.sweep.synthetic_set(DUPLICATES)
    m = json.loads((smoke.dir / "cells" / DUPLICATES.name / "metrics.json").read_text())
    assert len(dup) == len(real) == m["n_synthetic"]  # ratio 1
    where = {r: i for i, r in enumerate(real.ids)}
    assert set(dup.ids) == set(real.ids)
    for i, rid in enumerate(dup.ids):
        j = where[rid]
        assert np.array_equal(dup.image(i), real.image(j))
        assert np.array_equal(dup.labels[i], real.labels[j])


def test_results_csv_has_one_row_per_cell_and_finding(smoke):
    import pandas as pd

    table = pd.read_csv(smoke.dir / "results.csv")
    assert tuple(table.columns) == CSV_COLUMNS
    labels = smoke.sweep.data.label_names
    every = table[table["subgroup"] == "all"]
    assert len(every) == len(SMOKE_CELLS) * (len(labels) + 2)
    for cell in SMOKE_CELLS:
        rows = every[every["cell"] == cell.name]
        assert sorted(rows["finding"]) == sorted([*labels, "macro_clear", "macro_all"])
        assert set(rows["source"]) == {cell.source} and set(rows["mode"]) == {cell.mode}
    macro = every[every["finding"] == "macro_all"]
    assert macro["auroc"].between(0, 1).all()


def test_report_is_self_contained_and_gains_cover_the_arms(smoke):
    html = (smoke.dir / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for bad in ("<link", "<script src", "@import", "http://", "https://"):
        assert bad not in html.lower(), bad
    srcs = re.findall(r"""src=["']([^"']*)""", html)
    assert srcs and all(s.startswith("data:") for s in srcs)

    summary = json.loads((smoke.dir / "metrics.json").read_text())
    arms = {(g["fraction"], g["source"], g["mode"], g["ratio"], g["shuffled_labels"])
            for g in summary["gains"]}
    assert arms == {(0.5, "phantom_oracle", "mix", 1.0, False),
                    (0.5, "phantom_oracle", "pretrain", 1.0, False),
                    (0.5, "duplicates", "mix", 1.0, False)}
    primary = [g for g in summary["gains"]
               if g["endpoint"] == "macro_clear" and g["subgroup"] == "all"]
    assert len(primary) == 3 and all(g["n_seeds"] == 1 for g in primary)
    assert {r["fraction"] for r in summary["real_curve"]} == {0.5, 1.0}
    assert summary["cells"]["planned"] == summary["cells"]["done"] == 5


# ---------------------------------------------------------------------------------------------
# resuming and the report command


def test_a_rerun_skips_done_cells_and_a_cleared_cell_runs_again(smoke, tmp_path):
    folder = tmp_path / "sweep"
    shutil.copytree(smoke.dir, folder)
    cfg = augment_cfg(folder, smoke.cache)
    before = _weights_mtimes(folder)
    selection = (folder / "steps" / "f0.5" / "run" / "log.jsonl").stat().st_mtime_ns
    with contextlib.redirect_stdout(io.StringIO()):
        again = augment_sweep.run(cfg)
    assert again["cells_run"] == 0 and again["cells_failed"] == []
    assert again["synthetic"]["phantom_oracle"]["generated"] == 0
    assert again["synthetic"]["phantom_oracle"]["from_cache"] == 20
    record = json.loads((folder / "synthetic" / "phantom_oracle.json").read_text())
    assert record["generated"] == 20  # what every run of the sweep generated
    assert _weights_mtimes(folder) == before and len(before) == 6  # 5 cells + 1 pretrain phase
    assert (folder / "steps" / "f0.5" / "run" / "log.jsonl").stat().st_mtime_ns == selection

    (folder / "cells" / ORACLE_MIX.name / "DONE").unlink()
    with contextlib.redirect_stdout(io.StringIO()):
        third = augment_sweep.run(cfg)
    assert third["cells_run"] == 1 and third["cells_failed"] == []
    after = _weights_mtimes(folder)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {f"cells/{ORACLE_MIX.name}/classifier/model.safetensors"}
    assert (folder / "cells" / ORACLE_MIX.name / "DONE").is_file()


def test_report_command_rebuilds_results_identically(smoke, tmp_path):
    folder = tmp_path / "sweep"
    shutil.copytree(smoke.dir, folder)
    (folder / "results.csv").unlink()
    (folder / "report.html").unlink()
    assert report_main([str(folder), "--n-boot", "20"]) == 0
    assert (folder / "results.csv").read_bytes() == (smoke.dir / "results.csv").read_bytes()
    assert (folder / "report.html").is_file()
    summary = json.loads((folder / "metrics.json").read_text())
    assert len(summary["gains"]) == len(json.loads(
        (smoke.dir / "metrics.json").read_text())["gains"])


def test_report_command_on_a_folder_without_sweep_json(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(tmp_path) in err[0]
    assert "sweep.json" in err[0]


# ---------------------------------------------------------------------------------------------
# the diffusion source


def test_diffusion_without_a_model_dir_is_a_config_error(tmp_path, monkeypatch):
    class NoData:  # the check needs no data: skip loading it
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(augment_sweep, "RealData", NoData)
    cfg = augment_cfg(tmp_path / "sweep", tmp_path / "cache", "grid.sources=[diffusion]")
    with pytest.raises(ConfigError, match=r"generator\.model_dir"):
        augment_sweep.run(cfg)


def test_a_diffusion_sweep_on_a_tiny_pipeline(tmp_path):
    """Tiny random Stable Diffusion (32 px images; its numbers mean nothing): the cache step,
    the baseline and one mix cell, images resized to the cells' 16 px, provenance kept."""
    from tests.helpers.diffusion import tiny_sd_folder

    model = tiny_sd_folder(tmp_path / "sd")
    folder = tmp_path / "sweep"
    cfg = augment_cfg(folder, tmp_path / "cache", f"generator.model_dir={model}",
                      "generator.device=cpu", "generator.sampler.steps=2",
                      "generator.sampler.batch_size=10", "grid.sources=[diffusion]",
                      "grid.modes=[mix]", "grid.duplicates=[]", "grid.real_only_fractions=[]")
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = augment_sweep.run(cfg)
    assert metrics["cells_failed"] == []
    cell = Cell(0.5, 1, "mix", "diffusion", 0)
    for c in (BASE, cell):
        assert (folder / "cells" / c.name / "DONE").is_file()
    record = json.loads((folder / "synthetic" / "diffusion.json").read_text())
    m = json.loads((folder / "cells" / cell.name / "metrics.json").read_text())
    n = m["n_real"]
    assert (record["requested"], record["generated"], record["from_cache"]) == (n, n, 0)
    assert record["seconds"] > 0 and "weights-sha256" in str(record["model_id"])
    assert m["n_synthetic"] + m["dropped_diverged"] == n
    manifest = _lines(Path(record["cache"]) / "manifest.jsonl")
    assert len(manifest) == n
    for line in manifest:
        assert line["model_id"] == record["model_id"] and isinstance(line["seed"], int)
        assert line["prompt_policy"] == "text"  # phantom_iu's policy: the text is public
    sweep = augment_sweep.Sweep(cfg, folder)
    texts = set(sweep.pool(cell).texts)
    assert all(line["prompt"] in texts for line in manifest)
    syn = sweep.synthetic_set(cell)
    assert syn.image(0).shape == (16, 16)
    sides = [j for j, name in enumerate(syn.label_names) if name.endswith(("_left", "_right"))]
    assert np.isnan(syn.labels[:, sides]).all()  # a generated image's side is unknown
    assert (folder / "report.html").is_file()


# ---------------------------------------------------------------------------------------------
# launchers (slow)


def _biomed(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOMED_OUTPUTS": str(cwd / "outputs")}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "biomed"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


TWO_CELLS = ["debug=smoke", "image_size=16", "grid.modes=[mix]", "grid.duplicates=[]",
             "grid.real_only_fractions=[]"]


def _check_two_cells(folder: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    for c in (BASE, ORACLE_MIX):
        assert (folder / "cells" / c.name / "DONE").is_file(), proc.stderr[-3000:]
    assert (folder / "report.html").is_file() and (folder / "results.csv").is_file()


@pytest.mark.slow
def test_two_shards_through_hydras_joblib_launcher(tmp_path):
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    except ImportError:
        pytest.skip("hydra-joblib-launcher is not installed (pip install hydra-joblib-launcher)")
    folder = tmp_path / "sweep"
    proc = _biomed("augment", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "shard=0/2,1/2", f"sweep_dir={folder}", f"hydra.sweep.dir={tmp_path / 'mr'}",
                   f"synthetic.cache_dir={tmp_path / 'cache'}", *TWO_CELLS, cwd=tmp_path)
    _check_two_cells(folder, proc)
    timing = sorted(p.name for p in (folder / "timing").glob("*.json"))
    assert timing == ["shard-0-of-2.json", "shard-1-of-2.json"]
    runs = [json.loads(p.read_text())["cells_run"] for p in (folder / "timing").glob("*.json")]
    assert sorted(runs) == [1, 1]  # one cell each
    record = json.loads((folder / "synthetic" / "phantom_oracle.json").read_text())
    assert record["generated"] + record["from_cache"] == record["requested"]


@pytest.mark.slow
def test_cells_as_ray_tasks(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed: pip install -e '.[cluster]'")
    folder = tmp_path / "sweep"
    proc = _biomed("augment", "runner=ray", "ray.num_cpus=2", f"sweep_dir={folder}",
                   f"hydra.run.dir={tmp_path / 'run'}",
                   f"synthetic.cache_dir={tmp_path / 'cache'}", *TWO_CELLS, cwd=tmp_path)
    _check_two_cells(folder, proc)
    m = json.loads((folder / "metrics.json").read_text())
    assert m["cells_failed"] == [] and m["cells_run"] == 2
