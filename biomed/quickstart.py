"""`biomed quickstart`: every stage of the workbench in order, on the embedded data, resumable.

The run folder is fixed (``outputs/quickstart/latest/``). Each stage writes its outputs, then
``stages/<name>.json`` with its numbers and a hash of its inputs (the configs it runs, resolved:
for an imaging stage the command's shipped config as composed, so an edit of
``conf/classifier/small_cnn.yaml`` counts; its data files' sizes and times); a rerun skips stages
whose record and outputs exist and whose inputs are unchanged, so an interrupted quickstart
continues where it stopped, and a changed setting reruns that stage and every stage after it.
``biomed quickstart debug=smoke`` runs every stage small (``conf/debug/smoke.yaml``). Later
parts of the workbench add stages (train the tiny LM, render phantoms, train the classifier, ...)
to ``STAGES``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app

Configs = dict[str, Any]  # a stage's inputs by name: config nodes (or plain values)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    outputs: tuple[str, ...]  # paths relative to the run folder
    fn: Callable[[DictConfig, Path, Configs], dict[str, Any]]  # (cfg, run folder, its configs)
    configs: Callable[[DictConfig, Path], Configs]  # what the stage runs, composed before it runs
    data_files: Callable[[DictConfig], list[str]]

    def fingerprint(self, cfg: DictConfig, configs: Configs, run_dir: Path) -> str:
        """Hash of the stage's inputs: its configs (resolved) and its data files (size, mtime).

        A command's composed config leaves out ``paths`` (its run folder, the output root), and
        any value naming a place inside the quickstart's run folder is taken relative to it, so
        that only a setting that changes the result reruns the stage, not a moved folder.
        """
        parts = {k: _comparable(v, run_dir) for k, v in configs.items()}
        files = []
        for f in self.data_files(cfg):
            p = Path(f)
            st = p.stat() if p.exists() else None
            files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
        blob = json.dumps({"config": parts, "files": files}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _comparable(value: Any, run_dir: Path) -> Any:
    """A config node as plain resolved data for the fingerprint (see `Stage.fingerprint`)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, dict) and "command" in value:  # a command's whole config
            value = {k: v for k, v in value.items() if k not in ("paths", "hydra")}
    prefix = str(run_dir)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str) and (v == prefix or v.startswith(prefix + "/")):
            return "<run_dir>" + v[len(prefix):]
        return v

    return walk(value)


def _own(*keys: str) -> Callable[[DictConfig, Path], Configs]:
    """A stage whose inputs are parts of the quickstart's own config."""
    return lambda cfg, run_dir: {k: cfg[k] for k in keys}


def _no_files(cfg: DictConfig) -> list[str]:
    return []


def _fresh_stage_dir(out: Path) -> Path:
    """A training stage's folder, emptied: a stage that reruns (its inputs changed, or it
    stopped part way) starts a new training run, and the engine refuses a fresh run beside the
    checkpoints of an earlier one."""
    import shutil

    if out.exists():
        print(f"quickstart: clearing {out} for a new run of its stage")
        shutil.rmtree(out)
    return out


def _corpus(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    from biomed.lm.corpus import extract

    stats = extract(list(cfg.pubmed.files), run_dir / "corpus" / "pubmed.jsonl")
    return {"pubmed_records_read": stats.read, "pubmed_abstracts": stats.written,
            "pubmed_no_abstract": stats.no_abstract, "pubmed_deleted": stats.deleted,
            "pubmed_duplicates": stats.duplicates, "pubmed_extract_s": round(stats.seconds, 2)}


def _reports(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    from biomed.imaging.reports.iu import export_reports

    n = export_reports(run_dir / "reports" / "reports.jsonl", cfg.reports.file)
    return {"iu_reports": n}


def _lm(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    """Train the tiny LM on the corpus stage's output, then reload, evaluate and sample it."""
    from biomed.lm.evaluate import validation_metrics
    from biomed.lm.generate import generate, write_samples
    from biomed.lm.model import load_for_inference
    from biomed.lm.train import train_lm

    stage = cfg.lm_stage
    corpus = run_dir / "corpus" / "pubmed.jsonl"
    if not corpus.is_file():
        raise ConfigError(f"{corpus}: missing; the lm stage needs the corpus stage before it")
    out = _fresh_stage_dir(run_dir / "lm")
    train_cfg = OmegaConf.create(OmegaConf.to_container(stage, resolve=True))
    train_cfg.seed, train_cfg.corpus = cfg.seed, str(corpus)
    trained = train_lm(train_cfg, out)
    runs.write_json(out / "metrics.json", trained)
    model, tokenizer, folder = load_for_inference(out / "model")  # what a user would load
    train_cfg.batch_size, train_cfg.val_max_tokens = stage.eval.batch_size, \
        stage.eval.final_max_tokens
    val = validation_metrics(model, tokenizer, train_cfg, next(model.parameters()).device)
    samples = generate(model, tokenizer, list(stage.prompts),
                       max_new_tokens=int(stage.max_new_tokens),
                       temperature=float(stage.temperature), top_p=float(stage.top_p),
                       seed=int(cfg.seed))
    write_samples(out / "samples.jsonl", samples, {"model": str(folder), "seed": int(cfg.seed)})
    print(f"lm sample: {samples[0]['prompt']}{samples[0]['text']}")
    return {"lm_val_ppl": trained["val_ppl"], "lm_unigram_ppl": trained["unigram_ppl"],
            "lm_ppl_ratio": trained["ppl_ratio"], "lm_val_ppl_reloaded_fp32": val["val_ppl"],
            "lm_steps": trained["steps"], "lm_train_seconds": round(trained["train_seconds"], 1),
            "lm_tokens_per_s": round(trained["tokens_per_s"] or 0.0, 1),
            "lm_params": trained["params"], "lm_model_dir": str(folder)}


def _command_cfg(cfg: DictConfig, config_name: str, stage: str, run_dir: Path) -> DictConfig:
    """A command's own shipped config, as the CLI would compose it, with the quickstart's seed,
    its ``debug`` option (``biomed quickstart debug=smoke``: every stage small), its
    ``stage_overrides.<stage>`` list and the stage's folder as the run folder."""
    from biomed.config import compose

    debug = [f"debug={cfg.debug}"] if cfg.get("debug") else []
    extra = list(cfg.stage_overrides.get(stage) or [])
    return compose(config_name, [f"paths.run_dir={run_dir}", f"seed={cfg.seed}",
                                 f"paths.cache_dir={cfg.paths.cache_dir}", *debug, *extra])


def _phantom_configs(cfg: DictConfig, run_dir: Path) -> Configs:
    """The data config that the classifier stage composes renders the set."""
    return {"data": _command_cfg(cfg, "train_classifier", "phantom", run_dir / "phantom").data}


def _classifier_configs(cfg: DictConfig, run_dir: Path) -> Configs:
    out = run_dir / "classifier"
    return {"train_classifier": _command_cfg(cfg, "train_classifier", "classifier", out)}


def _clip_configs(cfg: DictConfig, run_dir: Path) -> Configs:
    return {"train_clip": _command_cfg(cfg, "train_clip", "clip", run_dir / "clip")}


def _diffusion_configs(cfg: DictConfig, run_dir: Path) -> Configs:
    return {"train_diffusion": _command_cfg(cfg, "train_diffusion", "diffusion",
                                            run_dir / "diffusion"),
            "generate": _command_cfg(cfg, "generate", "generate", run_dir / "samples"),
            "evaluate_generation": _command_cfg(cfg, "evaluate_generation", "evaluate_generation",
                                                run_dir / "diffusion_eval")}


def _phantom(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    """Render the paired phantom set once (every later stage reads the same cache)."""
    from hydra.utils import instantiate

    from biomed.imaging.core.pixels import image_grid, write_png16

    ds = instantiate(configs["data"], split=None)
    out = run_dir / "phantom"
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "stats.json", ds.stats)
    # a contact sheet of the first renders of a few reports, with their text beside it
    picks = list(range(0, min(len(ds), 24), 3))
    write_png16(out / "examples.png", image_grid(np.stack([ds[i]["image"] for i in picks]), 4))
    (out / "examples.txt").write_text("\n".join(f"{ds[i]['id']}: {ds[i]['report']}"
                                                 for i in picks) + "\n")
    reports = ds.stats["reports"]
    return {"phantom_images": len(ds), "phantom_reports_used": reports["used"],
            "phantom_reports_included": reports["included"],
            "phantom_reports_excluded": reports["excluded"],
            "phantom_templates": ds.stats["templates"]}


def _classifier(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    from biomed.imaging.classifier.train import train_classifier

    out = _fresh_stage_dir(run_dir / "classifier")
    m = train_classifier(configs["train_classifier"], out)
    runs.write_json(out / "metrics.json", m)
    return {"classifier_clear_macro_auroc": m.get("clear_macro_auroc"),
            "classifier_macro_auroc": m.get("macro_auroc"),
            "classifier_lr_accuracy_effusion": m.get("lr_accuracy_effusion"),
            "classifier_lr_accuracy_pneumothorax": m.get("lr_accuracy_pneumothorax"),
            "classifier_steps": m.get("steps"), "classifier_dir": m["classifier_dir"]}


def _clip(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    from biomed.imaging.clip.train import train_clip

    out = _fresh_stage_dir(run_dir / "clip")
    m = train_clip(configs["train_clip"], out)
    runs.write_json(out / "metrics.json", m)
    keep = [k for k in m if k.startswith(("zs_auroc_cardiomegaly", "zs_auroc_effusion",
                                          "i2t_R@", "t2i_R@"))]
    return {**{f"clip_{k}": m[k] for k in keep}, "clip_steps": m.get("steps"),
            "clip_dir": m["clip_dir"]}


def _diffusion(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    """Train the tiny text-to-X-ray model, sample it with provenance, and measure its prompt
    fidelity with the classifier and CLIP stages' models."""
    from biomed.imaging.diffusion import sample
    from biomed.imaging.diffusion.evaluate import command as evaluate
    from biomed.imaging.diffusion.train import train_diffusion

    out = _fresh_stage_dir(run_dir / "diffusion")
    m = train_diffusion(configs["train_diffusion"], out)
    runs.write_json(out / "metrics.json", m)
    gen = sample.run(configs["generate"])
    ev = evaluate.run(configs["evaluate_generation"])
    keep = {k: v for k, v in ev.items() if k.startswith(("fidelity_auroc_", "fidelity_suites_",
                                                         "laterality_accuracy_", "negation_share_"))
            and isinstance(v, int | float)}
    return {"diffusion_steps": m.get("steps"), "diffusion_val_loss": m.get("val_loss"),
            "diffusion_pipeline_dir": m.get("pipeline_dir"), "samples": gen.get("count"),
            "samples_diverged": gen.get("diverged"), "fid_classifier": ev.get("fid_classifier"),
            **keep}


def _augment_configs(cfg: DictConfig, run_dir: Path) -> Configs:
    return {"augment": _command_cfg(cfg, "augment", "augment", run_dir / "augment")}


def _augment(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    """A small augmentation sweep with the diffusion stage's model and the phantom oracle."""
    from biomed.augment import sweep

    _fresh_stage_dir(run_dir / "augment")
    m = sweep.run(configs["augment"])
    primary = {f"augment_gain_{g['source']}_{g['mode']}_x{g['ratio']:g}": [
        g["value"], g["ci_low"], g["ci_high"]] for g in m.get("gains", [])
        if g["endpoint"] == "macro_clear" and g["subgroup"] == "all"}
    return {**primary, "augment_cells": m.get("cells_planned"),
            "augment_synthetic": m.get("synthetic"), "augment_steps": m.get("steps")}


def _report(cfg: DictConfig, run_dir: Path, configs: Configs) -> dict[str, Any]:
    """One page with every part's numbers and pictures: report.html."""
    from biomed.quickstart_report import build_quickstart_report

    out = build_quickstart_report(run_dir)
    print(f"quickstart: the report is {out}")
    return {"report": str(out)}


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("corpus", "PubMed XML -> corpus/pubmed.jsonl", ("corpus/pubmed.jsonl",), _corpus,
          _own("pubmed"), lambda cfg: list(cfg.pubmed.files)),
    Stage("reports", "IU chest X-ray reports -> reports/reports.jsonl",
          ("reports/reports.jsonl",), _reports, _own("reports"), lambda cfg: [cfg.reports.file]),
    Stage("lm", "train the tiny PubMed LM, evaluate it, sample it -> lm/model/",
          ("lm/model/model.safetensors", "lm/samples.jsonl"), _lm, _own("lm_stage", "seed"),
          _no_files),
    Stage("phantom", "render the phantom chest X-rays paired with the IU reports (data=phantom_iu)",
          ("phantom/stats.json",), _phantom, _phantom_configs, _no_files),
    Stage("classifier", "train and evaluate the chest X-ray classifier -> classifier/",
          ("classifier/classifier/model.safetensors",), _classifier, _classifier_configs,
          _no_files),
    Stage("clip", "train and evaluate the CXR-CLIP -> clip/",
          ("clip/clip/open_clip_model.safetensors",), _clip, _clip_configs, _no_files),
    Stage("diffusion", "train the tiny text-to-X-ray diffusion model, sample it, measure its "
          "prompt fidelity -> diffusion/pipeline/, samples/, diffusion_eval/",
          ("diffusion/pipeline/model_index.json", "diffusion_eval/metrics.json"), _diffusion,
          _diffusion_configs, _no_files),
    Stage("augment", "does synthetic data help the classifier? a small sweep with the diffusion "
          "model and the phantom oracle -> augment/report.html",
          ("augment/report.html", "augment/results.csv"), _augment, _augment_configs, _no_files),
    Stage("report", "every part's numbers and pictures on one page -> report.html",
          ("report.html",), _report, _own("stages"), _no_files),
)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stages in order; returns the merged numbers of every stage."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"quickstart.stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
    stages = [STAGES[s] for s in cfg.stages]
    data_files = [f for s in stages for f in s.data_files(cfg)]
    metrics: dict[str, Any] = {}
    upstream_changed = False  # a stage that reruns invalidates the stages after it (as make does)
    with runs.experiment(cfg, data_files) as run_dir:
        for i, stage in enumerate(stages, 1):
            record = run_dir / "stages" / f"{stage.name}.json"
            configs = stage.configs(cfg, run_dir)
            inputs = stage.fingerprint(cfg, configs, run_dir)
            previous = json.loads(record.read_text()) if record.exists() else None
            outputs_there = all((run_dir / o).exists() for o in stage.outputs)
            if previous and outputs_there and not cfg.force and not upstream_changed:
                if previous.get("inputs") == inputs:
                    print(f"[{i}/{len(stages)}] {stage.name}: done earlier, skipped ({record})")
                    metrics.update({k: v for k, v in previous.items() if k != "inputs"})
                    continue
                print(f"[{i}/{len(stages)}] {stage.name}: its config or data changed, rerunning")
            print(f"[{i}/{len(stages)}] {stage.name}: {stage.description}")
            t0 = time.perf_counter()
            out = stage.fn(cfg, run_dir, configs)
            out[f"{stage.name}_seconds"] = round(time.perf_counter() - t0, 2)
            runs.write_json(record, {**out, "inputs": inputs})
            metrics.update(out)
            upstream_changed = True
        metrics["key_metrics"] = [k for k in ("pubmed_abstracts", "iu_reports", "lm_val_ppl",
                                              "lm_ppl_ratio") if k in metrics]
        runs.finish_run(run_dir, metrics)
    print(f"quickstart: {len(stages)} stage(s) done in {run_dir}")
    return metrics


main = hydra_app("quickstart")(run)

if __name__ == "__main__":
    main()
