"""`biomed predict`: finding probabilities for a folder or a list of images.

``classifier_dir=`` (a `biomed train-classifier` run or its ``classifier/`` folder) gives one
probability per finding and the call at the threshold saved with the model; ``clip_dir=`` (a
`biomed train-clip` run) gives CXR-CLIP zero-shot scores
(`biomed.imaging.clip.model.zero_shot_scores`).
``inputs=`` is a folder (searched recursively; hidden files ignored), a file, a glob or a list of
them; PNG/JPEG/TIFF files are read with `biomed.imaging.data.read.read_image_file`, everything
else as DICOM, which is de-identified (`biomed.imaging.dicom.deid`, PS3.15 Basic Profile) before
its pixels are decoded. Every file is read under the caps and the one error policy of
`biomed.imaging.dicom.guard`. Images are resized (squashed) to the classifier's input size.

Outputs in the run folder: ``predictions.csv`` (``id``, ``source``, ``kind``, one column per
finding, and ``<finding>_call`` 0/1 for the classifier), ``skipped.csv`` (``source``, ``reason``:
a bad file is skipped and recorded, never the end of the batch) and ``metrics.json`` (counts).

Privacy: ``id`` is a keyed hash of the file's path (the same id `biomed dicom ingest` gives a file
of the same folder, with the same key); ``source`` is a keyed hash too (file and folder names are
often UIDs or patient names); ``hash_paths=false`` writes the path of PNG/JPEG files in plain
(DICOM sources are always hashed). Nothing from a DICOM header reaches an output, and the run's
own records (provenance.json's command line, .hydra/, a failure's message) hold the ``inputs=``
paths as keyed hashes.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from biomed import runs
from biomed.errors import ConfigError, InputError
from biomed.hydra_app import hydra_app
from biomed.imaging.core import pixels
from biomed.imaging.data.read import read_image_file
from biomed.imaging.dicom import deid as deid_mod
from biomed.imaging.dicom.guard import decoder_errors
from biomed.imaging.dicom.ingest import default_key_file
from biomed.imaging.dicom.read import ReadOptions, dataset_to_image, read_dataset
from biomed.imaging.dicom.walk import find_files
from biomed.outpaths import write_csv_atomic

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"


@dataclass(frozen=True)
class InputFile:
    path: Path
    rel: str  # the name ids are keyed on: relative to an input folder, else the path as given

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES


# ---------------------------------------------------------------------------------------------
# inputs


def collect_inputs(inputs: str | Sequence[str]) -> list[InputFile]:
    """Every file named by ``inputs`` (folders recursively, globs expanded), each once.

    A path that does not exist or a glob that matches nothing is a user mistake: `InputError`
    before any work. Unreadable files are found later, one by one, and skipped.
    """
    items = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    if not items:
        raise InputError("inputs", "no inputs given")
    single_folder = len(items) == 1 and Path(items[0]).expanduser().is_dir()
    files: list[InputFile] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = find_files(p)
            files += [InputFile(f, f.relative_to(p).as_posix() if single_folder else str(f))
                      for f in found]
        elif p.is_file():
            files.append(InputFile(p, item))
        elif glob.has_magic(item):
            matches = sorted(m for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(item, "no file matches this pattern")
            files += [InputFile(Path(m), m) for m in matches]
        else:
            raise InputError(p, "no such file or folder")
    unique: dict[Path, InputFile] = {}
    for f in files:
        unique.setdefault(f.path.resolve(), f)
    if not unique:
        raise InputError(", ".join(items), "no input files (empty folder; hidden files are "
                         "ignored)")
    return list(unique.values())


def read_input(f: InputFile, deid: deid_mod.Deidentifier,
               options: ReadOptions) -> tuple[np.ndarray, str]:
    """(image in the workbench convention, kind): PNG/JPEG/TIFF by extension, else DICOM,
    de-identified before decoding. Any failure of a reader or decoder (a decoder panic, a
    decompression bomb, a malformed field) is an `InputError` for this file
    (`biomed.imaging.dicom.guard.decoder_errors`); Ctrl-C and exit still stop."""
    if f.is_image:  # Pillow under the same policy and pixel cap (`read_image_file`)
        return read_image_file(f.path, limits=options.limits), "image"
    with warnings.catch_warnings():  # pydicom's: the reason says what matters
        warnings.simplefilter("ignore")
        with decoder_errors(f.path, "cannot read"):
            ds = read_dataset(f.path, limits=options.limits)
            # only the decoded image is used (and nothing of it written): no re-encoding
            clean = deid.deidentify(ds, f.path, pixels="copy", limits=options.limits)
            return dataset_to_image(clean, f.path, options).image, "dicom"


def _source(f: InputFile, deid: deid_mod.Deidentifier, hash_paths: bool) -> str:
    if f.is_image and not hash_paths:
        return f.rel
    return "hash:" + deid.hash_text("path:" + f.rel)


def _reason(e: InputError, f: InputFile) -> str:
    reason = e.reason
    for text in sorted({str(f.path), str(f.path.resolve()), f.rel, f.path.name}, key=len,
                       reverse=True):  # paths may hold patient names (short ones do not)
        if len(text) >= 5:
            reason = reason.replace(text, "<file>")
    return reason[:500]


def iter_images(files: Sequence[InputFile], deid: deid_mod.Deidentifier, options: ReadOptions,
                hash_paths: bool, skipped: list[dict[str, str]], progress: bool | None = None
                ) -> Iterator[tuple[dict[str, str], np.ndarray]]:
    """(row with id/source/kind, image) for each readable file; others go to ``skipped``.
    ``progress``: a bar over the files (None: only on a terminal)."""
    from tqdm.auto import tqdm

    for f in tqdm(files, desc="predict", unit="file", disable=None if progress is None
                  else not progress, file=sys.stderr):
        source = _source(f, deid, hash_paths)
        try:
            img, kind = read_input(f, deid, options)
        except InputError as e:  # one bad file must not stop the batch: record it, go on
            skipped.append({"source": source, "reason": _reason(e, f)})
            continue
        yield {"id": deid.hash_text("id:" + f.rel), "source": source, "kind": kind}, img


def _batches(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------
# models


class _ClassifierScorer:
    """Probabilities and threshold calls of a saved classifier."""

    kind = "classifier"

    def __init__(self, path: str, device: str):
        from biomed.imaging.classifier.model import load_classifier, resolve_classifier_dir

        self.folder = resolve_classifier_dir(path)
        self.model, self.config = load_classifier(self.folder, device)
        self.device = device
        self.size = tuple(int(v) for v in self.config["input_size"])
        self.findings = list(self.config["labels"])
        self.thresholds = [float(self.config.get("thresholds", {}).get(n, 0.5))
                           for n in self.findings]

    def columns(self) -> list[str]:
        return self.findings + [f"{n}_call" for n in self.findings]

    @torch.no_grad()
    def score(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        x = torch.from_numpy(np.stack([pixels.resize(im, self.size) for im in images]))[:, None]
        p = torch.sigmoid(self.model(x.to(self.device)).float()).cpu().numpy()
        rows = []
        for probs in p:
            row: dict[str, Any] = {n: f"{v:.6f}" for n, v in zip(self.findings, probs,
                                                                 strict=True)}
            row.update({f"{n}_call": int(v >= t) for n, v, t in
                        zip(self.findings, probs, self.thresholds, strict=True)})
            rows.append(row)
        return rows


class _ClipScorer:
    """Zero-shot scores of a CXR-CLIP model (`biomed.imaging.clip.model.zero_shot_scores`).

    Images are squashed to the model's input size (``preprocess_cfg.size`` of its
    ``open_clip_config.json``; 224 when it says none) so that a batch stacks.
    """

    kind = "clip"

    def __init__(self, path: Path, device: str):
        self.path, self.device = path, device
        self.size = _clip_input_size(path)
        self.findings: list[str] | None = None

    def columns(self) -> list[str]:
        return list(self.findings or [])

    def score(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        clip = importlib.import_module("biomed.imaging.clip.model")  # lazily: open_clip is heavy
        fn = clip.zero_shot_scores
        extra = {"device": self.device} if "device" in inspect.signature(fn).parameters else {}
        batch = np.stack([pixels.resize(im, self.size) for im in images])
        scores, names = fn(str(self.path), batch, **extra)
        names = [str(n) for n in names]
        if self.findings is None:
            self.findings = names
        elif names != self.findings:
            raise ConfigError(f"{self.path}: zero-shot findings changed between batches")
        scores = np.asarray(scores, dtype=np.float64)
        return [{n: f"{v:.6f}" for n, v in zip(names, row, strict=True)} for row in scores]


def _clip_input_size(path: Path) -> tuple[int, int]:
    for folder in (path / "clip", path):
        cfg_path = folder / "open_clip_config.json"
        if cfg_path.is_file():
            try:
                size = json.loads(cfg_path.read_text()).get("preprocess_cfg", {}).get("size")
            except (ValueError, AttributeError):
                raise InputError(cfg_path, "not a valid open_clip config (JSON)") from None
            if isinstance(size, int | float):
                return int(size), int(size)
            if isinstance(size, list) and len(size) == 2:
                return int(size[0]), int(size[1])
            break
    return 224, 224


def _scorer(cfg: DictConfig) -> _ClassifierScorer | _ClipScorer:
    classifier, clip = cfg.get("classifier_dir"), cfg.get("clip_dir")
    if bool(classifier) == bool(clip):
        raise ConfigError("predict: give exactly one of classifier_dir=... or clip_dir=...")
    device = str(cfg.get("device") or "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA device is visible; use device=cpu")
    if classifier:
        return _ClassifierScorer(str(classifier), device)
    path = Path(str(clip)).expanduser()
    if not path.exists():
        raise InputError(path, "CLIP folder not found")
    return _ClipScorer(path, device)


# ---------------------------------------------------------------------------------------------
# the command


def predict(cfg: DictConfig, run_dir: str | Path, log=print) -> dict[str, Any]:
    """Score every input of ``cfg`` (``conf/predict.yaml``); write the CSVs in ``run_dir``."""
    run_dir = Path(run_dir)
    scorer = _scorer(cfg)
    inputs = cfg.get("inputs")
    if inputs is None:
        raise ConfigError("predict: inputs=... (a folder, a file, a glob or a list) is required")
    files = collect_inputs(list(inputs) if isinstance(inputs, ListConfig) else str(inputs))
    key_path = Path(cfg.key_file) if cfg.get("key_file") else default_key_file()
    deid = deid_mod.Deidentifier(
        deid_mod.load_or_create_key(key_path),
        deid_mod.DeidConfig(allow_burned_in=bool(cfg.get("allow_burned_in", False))))
    size = getattr(scorer, "size", None)
    options = ReadOptions(voi=str(cfg.get("voi", "file")), frame=cfg.get("frame"),
                          color="convert" if cfg.get("convert_color") else "refuse",
                          decode_size=size)
    skipped: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    images = iter_images(files, deid, options, bool(cfg.get("hash_paths", True)), skipped,
                         progress=cfg.get("progress"))
    for batch in _batches(images, int(cfg.get("batch_size", 32))):
        scored = scorer.score([img for _, img in batch])
        rows += [{**meta, **s} for (meta, _), s in zip(batch, scored, strict=True)]
    write_csv_atomic(run_dir / PREDICTIONS, ["id", "source", "kind", *scorer.columns()], rows)
    write_csv_atomic(run_dir / SKIPPED, ["source", "reason"], skipped)
    metrics = {"model": scorer.kind, "model_dir": str(cfg.get("classifier_dir")
                                                      or cfg.get("clip_dir")),
               "inputs": len(files), "predicted": len(rows), "skipped": len(skipped),
               "findings": list(scorer.findings or []),
               "predictions": str(run_dir / PREDICTIONS), "skipped_file": str(run_dir / SKIPPED),
               "key_metrics": ["predicted", "skipped"]}
    why = f" (reasons in {SKIPPED})" if skipped else ""
    log(f"predict: {len(rows)} predicted, {len(skipped)} skipped{why} -> "
        f"{run_dir / PREDICTIONS}")
    return metrics


def _model_files(cfg: DictConfig) -> list[Path]:
    """Weights recorded in provenance.json (never the inputs: their paths may hold names)."""
    if cfg.get("classifier_dir"):
        from biomed.imaging.classifier.model import WEIGHTS, resolve_classifier_dir

        try:
            return [resolve_classifier_dir(cfg.classifier_dir) / WEIGHTS]
        except InputError:
            return []
    return []


def _input_redactor(cfg: DictConfig) -> Callable[[str], str]:
    """Replaces the paths given as ``inputs=`` by keyed hashes in what the run records about
    itself (provenance.json's command line, .hydra/, a failure's message): folder and file names
    of inputs may hold patient names. Paths shorter than 4 characters are left as they are."""
    inputs = cfg.get("inputs")
    items = [str(i) for i in inputs] if isinstance(inputs, ListConfig) else \
        [] if inputs is None else [str(inputs)]
    texts: set[str] = set()
    for item in items:
        p = Path(item).expanduser()
        texts |= {item, str(p), str(p.absolute()), str(p.resolve())}
    texts = {t for t in texts if len(t) >= 4}
    if not texts:
        return lambda text: text
    key_path = Path(cfg.key_file) if cfg.get("key_file") else default_key_file()
    hasher = deid_mod.Deidentifier(deid_mod.load_or_create_key(key_path))
    order = sorted(texts, key=len, reverse=True)  # a path before the shorter ones inside it
    tokens = {t: f"<input:{hasher.hash_text('path:' + t, 12)}>" for t in order}

    def redact(text: str) -> str:
        for t in order:
            text = text.replace(t, tokens[t])
        return text

    return redact


def run(cfg: DictConfig) -> dict[str, Any]:
    """`biomed predict` (``conf/predict.yaml``): ``predictions.csv`` in the run folder."""
    with runs.experiment(cfg, _model_files(cfg), redact=_input_redactor(cfg)) as run_dir:
        metrics = predict(cfg, run_dir)
        runs.finish_run(run_dir, metrics)
    return metrics


main = hydra_app("predict")(run)

if __name__ == "__main__":
    main()
