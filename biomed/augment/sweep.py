"""`biomed augment`: the grid of cells, the step budget S, the synthetic cache, the run.

In order (every step resumable; the sweep folder holds everything):

1. ``sweep.json``: the planned cells (`plan_cells`), the data, the generator, the prompt pool.
2. S per real fraction (``steps/f<fraction>/steps.json``): the ratio-0 baseline of
   ``steps.selection_seed`` trains ``steps.max_steps`` steps with a validation macro AUROC every
   ``steps.eval_every``; S is the step of the best one (ties: the earliest). ``steps.S`` sets it
   instead. Every cell of that fraction then trains S steps (equal compute).
3. The synthetic cache, before any cell starts: every image any planned cell needs, per source,
   generated in batches or found in the cache (`biomed.augment.cache`); ``synthetic/<source>.
   json`` records how many were generated, found, and the seconds spent.
4. The cells of this shard (``shard=i/n``), finished ones skipped, on the chosen runner
   (`biomed.augment.runners`), with a progress bar and an ETA.
5. When every planned cell is done: the fidelity of the synthetic sets
   (`biomed.augment.fidelity`), then ``results.csv``, ``metrics.json`` and ``report.html``
   (`biomed.augment.report`).

Processes that share a sweep folder (Hydra's joblib, Ray or SLURM launchers, ``shard=i/n``)
take a lock for steps 1-3 and 5, so exactly one of them chooses S, fills the cache and writes
the report, and the others wait for and reuse what it wrote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.augment.cache import SyntheticCache
from biomed.augment.cell import Cell, RealData, cell_config, run_cell
from biomed.augment.prompts import PromptPool, prompt_pool
from biomed.augment.sources import SOURCES, DiffusionSource, OracleSource
from biomed.augment.subsets import hashed_order
from biomed.augment.synthetic import Planned, build_synthetic, plan, requests
from biomed.errors import BiomedError, ConfigError
from biomed.hydra_app import hydra_app
from biomed.locks import file_lock

__all__ = ["Sweep", "main", "plan_cells", "run"]


# ---------------------------------------------------------------------------------------------
# the grid


def plan_cells(grid: DictConfig | dict) -> list[Cell]:
    """Every cell of ``grid`` (conf/augment.yaml), seed by seed, without duplicates."""
    g = OmegaConf.create(grid) if isinstance(grid, dict) else grid
    ratios = sorted({float(r) for r in g.ratios if float(r) > 0})
    for s in list(g.sources) + list(g.get("shuffled_labels") or []):
        if s not in SOURCES or s in ("none", "duplicates"):
            raise ConfigError(f"grid.sources: {s!r} is not a synthetic source (diffusion, "
                              "phantom_oracle)")
    cells: list[Cell] = []
    for seed in (int(s) for s in g.seeds):
        for f in (float(x) for x in g.fractions):
            cells.append(Cell(f, 0, "real", "none", seed))
            for source in g.sources:
                for mode in g.modes:
                    cells += [Cell(f, r, str(mode), str(source), seed) for r in ratios]
            for mode in g.get("duplicates") or []:
                cells += [Cell(f, r, str(mode), "duplicates", seed) for r in ratios]
            for source in g.get("shuffled_labels") or []:
                if ratios:
                    cells.append(Cell(f, max(ratios), "mix", str(source), seed, True))
        for f in (float(x) for x in g.get("real_only_fractions") or []):
            cells.append(Cell(f, 0, "real", "none", seed))
    return list(dict.fromkeys(cells))


def _shard(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in str(spec).split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise ConfigError(f"shard={spec!r}: write i/n with 0 <= i < n, e.g. 0/2") from None
    return i, n


# ---------------------------------------------------------------------------------------------
# the sweep


class Sweep:
    """One sweep folder and what its cells share in this process (data, pools, caches)."""

    def __init__(self, cfg: DictConfig, sweep_dir: str | Path):
        from biomed.config import compose

        self.cfg = cfg
        self.dir = Path(sweep_dir)
        self.cells = plan_cells(cfg.grid)
        if any(c.source == "diffusion" for c in self.cells) and not cfg.generator.model_dir:
            raise ConfigError("grid.sources has diffusion: set generator.model_dir=<a "
                              "train-diffusion run or pipeline folder> (or drop it: "
                              "grid.sources=[phantom_oracle])")
        self.base = compose("train_classifier", [
            *[str(o) for o in cfg.classifier_overrides],
            f"paths.cache_dir={cfg.paths.cache_dir}", f"paths.run_dir={self.dir}",
            *([f"debug={cfg.debug}"] if cfg.get("debug") else [])])
        self.data = RealData(self.base.data, cfg.get("image_size"))
        self._sources: dict[str, Any] = {}
        self._pools: dict[Any, PromptPool] = {}
        self._avoid: frozenset[int] | None = None

    # -- pieces -------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return self.dir / "cells" / cell.name

    def source(self, name: str):
        if name not in self._sources:
            if name == "diffusion":
                self._sources[name] = _diffusion_source(self.cfg, self.base.data)
            elif name == "phantom_oracle":
                if "findings" not in self.data.train.metadata:
                    raise ConfigError(f"source phantom_oracle: {self.data.name} has no drawn "
                                      "findings (the oracle needs phantom data, data=phantom_iu)")
                self._sources[name] = OracleSource(  # at the data's size, resized as it is
                    self.data.native_size[0], self.base.data.get("renderer"),
                    int(self.cfg.synthetic.oracle_batch_size))
            else:
                raise ConfigError(f"source {name!r} makes no images")
        return self._sources[name]

    def cache(self, name: str) -> SyntheticCache:
        src = self.source(name)
        return SyntheticCache(self.cfg.synthetic.cache_dir, src.id, src.describe())

    def pool(self, cell: Cell) -> PromptPool:
        p = self.cfg.prompts
        key = (cell.fraction, cell.seed) if p.pool == "subset" else "train"
        if key not in self._pools:
            self._pools[key] = prompt_pool(
                str(p.pool), str(p.policy), self.data.train,
                self.data.subset(cell.fraction, cell.seed),
                targeted_findings=list(p.targeted_findings),
                targeted_per_finding=int(p.targeted_per_finding),
                repeat_threshold=float(p.repeat_threshold))
        return self._pools[key]

    def avoid_seeds(self) -> frozenset[int]:
        """The dataset's own render seeds (the oracle's seeds stay apart from them)."""
        if self._avoid is None:
            seeds: set[int] = set()
            for ds in (self.data.train, self.data.val, self.data.test):
                seeds.update(int(s) for s in ds.metadata.get("render_seed") or [])
            self._avoid = frozenset(seeds)
        return self._avoid

    def synthetic_seed(self, cell: Cell) -> int:
        s = self.cfg.synthetic
        return int(s.seed) if not s.per_cell_seed else int(s.seed) * 1000 + cell.seed

    def planned(self, cell: Cell) -> list[Planned]:
        n = round(cell.ratio * len(self.data.subset(cell.fraction, cell.seed)))
        return plan(self.pool(cell), n, self.synthetic_seed(cell), str(self.cfg.prompts.policy),
                    self.avoid_seeds())

    def synthetic_set(self, cell: Cell):
        """The cell's synthetic training set (None at ratio 0)."""
        if cell.ratio == 0:
            return None
        if cell.source == "duplicates":
            real = self.data.subset(cell.fraction, cell.seed)
            n = round(cell.ratio * len(real))
            order = hashed_order(real.ids, cell.seed, salt="duplicates")
            dup = real.subset([int(order[k % len(order)]) for k in range(n)])
            dup.name = "duplicates"
            return dup
        return build_synthetic(self.pool(cell), self.planned(cell), cell.source,
                               self.cache(cell.source), self.data.size,
                               shuffled_labels=cell.shuffled_labels, label_seed=cell.seed)

    # -- the steps ----------------------------------------------------------------------------

    def steps(self, fraction: float, log=print) -> dict[str, Any]:
        """S of a fraction (see the module docstring, step 2), chosen once per sweep folder."""
        folder = self.dir / "steps" / f"f{fraction:g}"
        record = folder / "steps.json"
        with file_lock(self.dir / "steps" / ".lock"):
            if record.exists():
                return json.loads(record.read_text())
            given = {float(k): int(v) for k, v in (self.cfg.steps.S or {}).items()}
            st = self.cfg.steps
            if fraction in given:
                out = {"S": given[fraction], "chosen_by": "set in the config (steps.S)"}
            else:
                out = self._select_steps(fraction, folder / "run", log)
            out["fraction"] = fraction
            runs.write_json(record, out)
            log(f"augment: real_fraction {fraction:g}: S = {out['S']} steps "
                f"({out['chosen_by']}; max {st.max_steps})")
            return out

    def _select_steps(self, fraction: float, run_dir: Path, log) -> dict[str, Any]:
        import shutil

        from biomed.engine.logs import read_log
        from biomed.imaging.classifier.train import fit_classifier

        st = self.cfg.steps
        seed = int(st.selection_seed)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cfg = cell_config(self.base, steps=int(st.max_steps), seed=seed,
                          labels=self.data.label_names, eval_every=int(st.eval_every),
                          keep_best=False)
        real = self.data.subset(fraction, seed)
        fit_classifier(cfg, {"train": real, "val": self.data.val, "test": self.data.test},
                       run_dir, lambda m: None, reference=real)
        curve = [[int(r["step"]), float(r["val_macro_auroc"])] for r in read_log(run_dir)
                 if r.get("val_macro_auroc") is not None
                 and np.isfinite(r["val_macro_auroc"])]
        if not curve:
            raise ConfigError(f"{run_dir}: no validation AUROC to choose S from")
        best = max(curve, key=lambda c: (c[1], -c[0]))
        return {"S": int(best[0]), "max_steps": int(st.max_steps), "curve": curve,
                "best_val_macro_auroc": best[1],
                "chosen_by": f"the best validation macro AUROC of the ratio-0 baseline, seed "
                             f"{seed}, every {int(st.eval_every)} steps of {int(st.max_steps)}"}

    # -- the cache ----------------------------------------------------------------------------

    def build_cache(self, log=print) -> dict[str, Any]:
        """Every synthetic image of every planned cell, made or found (step 3); returns, per
        source, this run's counts (``synthetic/<source>.json`` counts every run of the
        sweep)."""
        from tqdm.auto import tqdm

        out = {}
        for name in dict.fromkeys(c.source for c in self.cells
                                  if c.source not in ("none", "duplicates")):
            cells = [c for c in self.cells if c.source == name]
            # the largest set of each (pool, synthetic seed) holds the smaller ones (nested)
            wanted: dict[str, Any] = {}
            for c in cells:
                for r in requests(self.pool(c), self.planned(c), name):
                    wanted[r.key] = r
            cache, src = self.cache(name), self.source(name)
            with tqdm(total=len(wanted), desc=f"augment: {name} images", unit="img",
                      mininterval=2.0) as bar:
                stats = cache.ensure(list(wanted.values()), src.make, src.provenance,
                                     batch_size=src.batch_size, progress=bar.update)
            this_run = stats
            path = self.dir / "synthetic" / f"{name}.json"
            if path.exists():  # a rerun: count what earlier runs of this sweep generated too
                before = json.loads(path.read_text())
                made = min(stats["requested"], int(before.get("generated", 0))
                           + stats["generated"])
                stats = {**stats, "generated": made, "from_cache": stats["requested"] - made,
                         "seconds": round(float(before.get("seconds", 0)) + stats["seconds"], 2)}
            pool = self.pool(cells[0])
            ds = build_synthetic(pool, self.planned(max(cells, key=lambda c: c.ratio)), name,
                                 cache, self.data.size)
            prevalence = {n: _share(ds.labels[:, j]) for j, n in enumerate(ds.label_names)
                          if n in self.data.label_names}
            record = {**src.describe(), **stats, "images": stats["requested"],
                      "diverged": int(sum(cache.diverged().get(k, False) for k in wanted)),
                      "prevalence": prevalence, "cache": str(cache.folder),
                      "prompts": pool.description, "policy": str(self.cfg.prompts.policy),
                      "label_rule": "exact (the findings drawn)" if name == "phantom_oracle"
                      else "the prompt's labels; side columns unknown (NaN)"}
            runs.write_json(path, record)
            log(f"augment: {name}: {this_run['requested']} images, {this_run['generated']} "
                f"generated in {this_run['seconds']:.0f} s, {this_run['from_cache']} from the "
                "cache")
            out[name] = {**record, **this_run, "images": this_run["requested"]}
        return out


def _share(col: np.ndarray) -> float | None:
    known = col[~np.isnan(col)]
    return float(known.mean()) if len(known) else None


def _diffusion_source(cfg: DictConfig, data_cfg: DictConfig) -> DiffusionSource:
    from biomed.imaging.diffusion.sample import PipelineGenerator

    g = cfg.generator
    policy = str(data_cfg.get("prompt_policy") or "text")
    salt = None
    if policy == "hash":
        from biomed.imaging.dicom.keys import default_key_file, load_or_create_key

        salt = load_or_create_key(default_key_file())
    gen = PipelineGenerator(str(g.model_dir), OmegaConf.to_container(g.sampler, resolve=True),
                            g.get("device"), prompt_policy=policy, salt=salt)
    return DiffusionSource(gen, trained_on=g.get("trained_on") or _trained_on(g.model_dir))


def _trained_on(model_dir: str) -> str | None:
    """The data that trained the pipeline, in a few words: the data config of the
    train-diffusion run that made it, else the pipeline's own ``biomed.json``."""
    folder = Path(model_dir)
    for f in (folder, folder.parent):
        conf = f / ".hydra" / "config.yaml"
        if conf.is_file() and OmegaConf.load(conf).get("command") == "train-diffusion":
            data = OmegaConf.load(conf).get("data") or {}
            keys = ("name", "size", "renders_per_report", "templates_per_finding",
                    "extra_templates", "max_reports")
            parts = {k: OmegaConf.to_container(data[k]) if OmegaConf.is_config(data[k])
                     else data[k] for k in keys if k in data}
            return f"the training split of {json.dumps(parts, default=str)}"
    for f in (folder / "pipeline" / "biomed.json", folder / "biomed.json"):
        if f.is_file():
            info = json.loads(f.read_text())
            return (f"the training split of {info.get('data')} at {info.get('image_size')} px "
                    f"({info.get('training')})")
    return None


# ---------------------------------------------------------------------------------------------
# running cells (one Sweep per process: the runner's workers build their own)

_SWEEPS: dict[str, Sweep] = {}


def _sweep_for(cfg_plain: dict, sweep_dir: str) -> Sweep:
    key = json.dumps([sweep_dir, cfg_plain], sort_keys=True, default=str)
    if key not in _SWEEPS:
        _SWEEPS.clear()  # one sweep per process at a time: its data are large
        _SWEEPS[key] = Sweep(OmegaConf.create(cfg_plain), sweep_dir)
    return _SWEEPS[key]


def run_cell_job(job: tuple[dict, str, dict]) -> dict[str, Any]:
    """One cell in this process (the runners' unit of work): ``(config, sweep folder, cell)``."""
    cfg_plain, sweep_dir, cell_dict = job
    sweep = _sweep_for(cfg_plain, sweep_dir)
    cell = Cell.from_dict(cell_dict)
    steps = json.loads((sweep.dir / "steps" / f"f{cell.fraction:g}" / "steps.json"
                        ).read_text())["S"]
    synthetic = sweep.synthetic_set(cell)
    return run_cell(sweep.base, cell, sweep.data, synthetic, steps=int(steps),
                    out_dir=sweep.cell_dir(cell), eval_every=int(sweep.cfg.steps.eval_every),
                    pretrain_share=float(sweep.cfg.steps.pretrain_share))


def _sweep_dir(cfg: DictConfig) -> Path:
    if cfg.get("sweep_dir"):
        return Path(str(cfg.sweep_dir))
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir)
    except ValueError:  # no Hydra runtime (tests set paths.run_dir)
        pass
    return Path(str(cfg.paths.run_dir))


def run_sweep(cfg: DictConfig, sweep_dir: Path, log=print) -> dict[str, Any]:
    """Steps 1-5 of the module docstring for this process's shard."""
    from tqdm.auto import tqdm

    from biomed.augment.runners import run_jobs

    sweep = _sweep_for(OmegaConf.to_container(cfg, resolve=True), str(sweep_dir))
    index, count = _shard(cfg.shard)
    t0 = time.perf_counter()
    with file_lock(sweep.dir / ".prepare.lock"):
        runs.write_json(sweep.dir / "sweep.json", _describe(sweep))
        steps = {f: sweep.steps(f, log) for f in dict.fromkeys(c.fraction for c in sweep.cells)}
        synthetic = sweep.build_cache(log)
        samples = sweep.dir / "samples.npz"
        if not samples.exists():
            from biomed.augment.report import _save_samples, collect_samples

            _save_samples(samples, collect_samples(sweep, int(cfg.report.samples_per_finding)))
    prepare_s = time.perf_counter() - t0
    mine = sweep.cells[index::count]
    todo = [c for c in mine if not (sweep.cell_dir(c) / "DONE").exists()]
    log(f"augment: {len(sweep.cells)} cells planned, shard {index}/{count}: {len(mine)}, "
        f"{len(mine) - len(todo)} done earlier, {len(todo)} to run")
    cfg_plain = OmegaConf.to_container(cfg, resolve=True)
    failed = []
    t1 = time.perf_counter()
    with tqdm(total=len(todo), desc="augment: cells", unit="cell") as bar:
        def done(item, result, error):
            bar.update(1)
            if error:
                failed.append({"cell": item[2]["name"], "error": error})
                log(f"augment: cell {item[2]['name']} failed: {error}")

        r = cfg.ray
        run_jobs(run_cell_job, [(cfg_plain, str(sweep.dir), c.to_dict()) for c in todo],
                 runner=str(cfg.runner), address=r.get("address"), num_cpus=r.get("num_cpus"),
                 cpus_per_task=int(r.get("cpus_per_task") or 1), on_done=done)
    cells_s = time.perf_counter() - t1
    timing = {"prepare_s": round(prepare_s, 1), "cells_s": round(cells_s, 1),
              "cells_run": len(todo)}
    runs.write_json(sweep.dir / "timing" / f"shard-{index}-of-{count}.json", timing)
    out: dict[str, Any] = {"cells_planned": len(sweep.cells), "cells_failed": failed,
                           "steps": {f"{f:g}": s["S"] for f, s in steps.items()},
                           "synthetic": {k: {x: v[x] for x in ("images", "generated",
                                                             "from_cache", "seconds")}
                                         for k, v in synthetic.items()}, **timing}
    finished = all((sweep.cell_dir(c) / "DONE").exists() for c in sweep.cells)
    if finished and cfg.report.build:
        from biomed.augment.fidelity import measure_fidelity
        from biomed.augment.report import build_report

        with file_lock(sweep.dir / ".report.lock"):
            measure_fidelity(sweep, log)
            out["summary"] = build_report(sweep.dir, n_boot=int(cfg.report.n_boot), log=log)
            out.update({k: out["summary"][k] for k in ("gains", "real_curve", "worth",
                                                        "not_improved")})
    elif not finished:
        log(f"augment: cells of other shards are still running; when they end, "
            f"`biomed augment-report {sweep.dir}` writes results.csv and report.html")
    return out


def _describe(sweep: Sweep) -> dict[str, Any]:
    d = sweep.data
    gen = sweep.cfg.generator
    pools = {}
    if any(c.ratio > 0 and c.source != "duplicates" for c in sweep.cells):
        first = next(c for c in sweep.cells if c.ratio > 0 and c.source != "duplicates")
        pools = {"pool": sweep.pool(first).description, "policy": str(sweep.cfg.prompts.policy)}
    return {
        "cells": [c.to_dict() for c in sweep.cells],
        "data": {"name": d.name, "kind": "phantom" if "findings" in d.train.metadata else "real",
                 "train_pool": len(d.train), "val": len(d.val), "test": len(d.test),
                 "test_reports": len(set(d.test.patient_ids)), "image_size": d.size[0],
                 "native_size": d.native_size[0],
                 "labels": d.label_names},
        "generator": None if not gen.model_dir else {"model_dir_name": Path(str(gen.model_dir)).name,
                                                     "sampler": OmegaConf.to_container(
                                                         gen.sampler, resolve=True)},
        "prompts": pools,
        "modes": {"mix": "train on the union of the real subset and the synthetic images for S "
                         "steps",
                  "pretrain": f"{float(sweep.cfg.steps.pretrain_share):g} of S on the synthetic "
                              "images alone (last weights), then the rest on the real subset "
                              "from those weights with a new optimizer and a restarted "
                              "schedule (warm-up, cosine)"},
        "synthetic_seed": {"seed": int(sweep.cfg.synthetic.seed),
                           "per_cell_seed": bool(sweep.cfg.synthetic.per_cell_seed)},
        "classifier": OmegaConf.to_container(sweep.base.classifier, resolve=True),
        "classifier_overrides": list(sweep.cfg.classifier_overrides),
        "keep_best": True,
        "demonstration": bool(sweep.cfg.get("demonstration", False)),
        "eval_every": int(sweep.cfg.steps.eval_every),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """`biomed augment` (conf/augment.yaml)."""
    sweep_dir = _sweep_dir(cfg)
    cfg = OmegaConf.merge(cfg, {"paths": {"run_dir": str(sweep_dir)}})
    with runs.experiment(cfg) as run_dir:
        metrics = run_sweep(cfg, run_dir)
        failed = metrics["cells_failed"]
        this_run = {k: v for k, v in metrics.items() if k not in ("summary", "gains",
                                                                "real_curve", "worth",
                                                                "not_improved")}
        # metrics.json: the report's summary when it was built, with this run's own counts
        record = {**metrics["summary"], "this_run": this_run} if "summary" in metrics \
            else this_run
        runs.finish_run(run_dir, record, status="failed" if failed else "completed")
    if failed:
        raise BiomedError(f"{len(failed)} of {metrics['cells_planned']} cells failed (each "
                          f"error is in {run_dir / 'metrics.json'}); a rerun retries them")
    return metrics


main = hydra_app("augment")(run)

if __name__ == "__main__":
    main()
