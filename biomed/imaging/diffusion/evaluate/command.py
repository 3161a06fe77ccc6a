"""`biomed evaluate-generation`: ``run(cfg)`` (``conf/evaluate_generation.yaml``) and its Hydra
command line: load the pipeline, the classifier and CXR-CLIP, evaluate on the held-out split,
write ``metrics.json``, ``table.md``, ``grid.png`` and ``report.html`` into the run folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.engine.devices import pick_device
from biomed.errors import BiomedError, ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.diffusion.evaluate.evaluation import evaluate_generation
from biomed.imaging.diffusion.evaluate.instruments import ClassifierTool
from biomed.imaging.diffusion.evaluate.settings import EvalSettings
from biomed.imaging.diffusion.evaluate.tables import write_outputs
from biomed.imaging.diffusion.sample import PipelineGenerator


def make_generator(cfg: DictConfig,
                   device: str | torch.device | None = None) -> PipelineGenerator:
    """The generator of ``cfg.model_dir`` (a train-diffusion run folder or its pipeline/);
    one-line `InputError` when the folder is not a pipeline."""
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else {}
    return PipelineGenerator(cfg.model_dir, sampler, device)


def _check_required(cfg: DictConfig) -> None:
    missing = [k for k in ("model_dir", "classifier_dir") if OmegaConf.is_missing(cfg, k)
               or not cfg.get(k)]
    if missing:
        raise ConfigError(f"evaluate-generation: set {' and '.join(f'{k}=...' for k in missing)}"
                          " (run folders of train-diffusion and train-classifier)")


def _dataset(cfg: DictConfig) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    split = cfg.data.get("split") or "test"
    try:
        return instantiate(cfg.data, split=split)
    except InstantiationException as e:
        if isinstance(e.__cause__, BiomedError):
            raise e.__cause__ from None
        raise


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the pipeline of ``cfg.model_dir`` (``conf/evaluate_generation.yaml``)."""
    from biomed.imaging.classifier.model import load_classifier

    _check_required(cfg)
    st = EvalSettings.from_cfg(cfg.eval, progress=bool(cfg.get("progress", True)))
    device = pick_device(cfg.get("device"))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    generate = make_generator(cfg, device)
    model, ccfg = load_classifier(cfg.classifier_dir, device)
    tool = ClassifierTool(model, ccfg["labels"], device=device,
                          batch_size=st.classifier_batch_size)
    clip = None
    if cfg.get("clip_dir"):
        from biomed.imaging.clip.model import load_clip

        clip = load_clip(cfg.clip_dir, device=device)
    with runs.experiment(cfg, runs.data_files(cfg)) as run_dir:
        dataset = _dataset(cfg)
        ev = evaluate_generation(generate, dataset, tool, clip=clip, settings=st,
                                 seed=int(cfg.seed))
        sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
        metrics = {"model_dir": str(cfg.model_dir),
                   "model_id": getattr(generate, "model_id", str(cfg.model_dir)),
                   "classifier_dir": str(cfg.classifier_dir),
                   "clip_dir": str(cfg.clip_dir) if cfg.get("clip_dir") else None,
                   "data": str(cfg.data.get("name") or getattr(dataset, "name", "?")),
                   "split": str(cfg.data.get("split") or "test"), "seed": int(cfg.seed),
                   "sampler": sampler, **ev.metrics}
        if hasattr(generate, "truncated"):
            metrics["prompts_truncated"] = len(generate.truncated)
            metrics["prompt_max_tokens"] = getattr(generate, "max_tokens", None)
        metrics["files"] = write_outputs(run_dir, metrics, ev)
        metrics["run_dir"] = str(run_dir)
        runs.finish_run(run_dir, metrics)
    _log_summary(metrics)
    return metrics


def _log_summary(m: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    parts = [f"{k}={f(m.get(k))}" for k in ("fidelity_auroc_cardiomegaly",
                                            "fidelity_auroc_effusion",
                                            "laterality_accuracy_effusion",
                                            "negation_share_effusion", "fid_classifier",
                                            "ms_ssim_generated", "clip_score_generated")]
    log(f"evaluate-generation: {' '.join(parts)}; {m['run_dir']}/table.md")


main = hydra_app("evaluate_generation")(run)

if __name__ == "__main__":
    main()
