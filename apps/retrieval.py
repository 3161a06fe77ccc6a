"""The "similar cases" of the Read-an-X-ray tab: a bank of real IU report embeddings, searched by
an image's CLIP embedding, and how often such a search finds the right report.

The bank holds the CLIP text embeddings of the real Indiana University reports (the 3,955 of
``biomed data fetch iu_reports``; each report's text as the workbench pairs it with phantoms:
impression, then findings). Identical texts (hundreds of reports read "No acute cardiopulmonary
abnormality.") are embedded once and shown once, with the number of reports that share them.
The bank is built once, at launch (`build_bank`, from ``read_xray.prepare``); a search is one
matrix-vector product (`ReportBank.search`, cosine similarity of unit vectors).

A search always returns *something*, so the page also says how often the right report comes
back (`RetrievalRate`). Preferred: the CLIP run's own held-out evaluation in its
``metrics.json`` (`rate_from_metrics`: image-to-text recall@k of `biomed.imaging.clip.evaluate`
on the test split, with chance levels). Otherwise it is measured at launch (`measure_rate`) on a
few phantom_iu test images (`phantom_sample`), each of which renders one IU report's findings:
a hit is the image's own report text among the top k of the whole bank.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomed.errors import InputError

__all__ = ["KS", "Hit", "ReportBank", "RetrievalRate", "build_bank", "image_embedding",
           "load_reports", "measure_rate", "phantom_sample", "rate_from_metrics"]

KS = (1, 5, 10)


@dataclass(frozen=True)
class Hit:
    """One retrieved report text: its rank (1 = best), cosine similarity and report ids."""

    rank: int
    score: float
    text: str
    ids: tuple[str, ...]  # every report with this exact text (the first one named on the page)


@dataclass
class ReportBank:
    """Distinct report texts, the reports that have each, and their unit CLIP embeddings."""

    texts: list[str]
    ids: list[tuple[str, ...]]  # per distinct text
    embeddings: torch.Tensor  # len(texts) x D, unit rows, float32 on the CPU
    reports: int  # reports behind the texts
    source: str  # where the reports came from (for the page)

    def __post_init__(self) -> None:
        self._by_id = {rid: u for u, ids in enumerate(self.ids) for rid in ids}

    def __len__(self) -> int:
        return len(self.texts)

    def index_of(self, report_id: str) -> int | None:
        """The distinct text a report has, or None when it is not in the bank."""
        return self._by_id.get(report_id)

    def scores(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every text to each image: (M x D or D) -> M x len(bank)."""
        q = torch.as_tensor(image_emb, dtype=torch.float32).reshape(-1, self.embeddings.shape[1])
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return q @ self.embeddings.t()

    def search(self, image_emb: torch.Tensor, k: int = 3) -> list[Hit]:
        """The ``k`` texts most similar to one image embedding, best first."""
        sim = self.scores(image_emb)[0]
        top = torch.topk(sim, min(int(k), len(self.texts)))
        return [Hit(r + 1, float(s), self.texts[u], self.ids[u])
                for r, (s, u) in enumerate(zip(top.values.tolist(), top.indices.tolist(),
                                               strict=True))]


# ---------------------------------------------------------------------------------------------
# building the bank


def load_reports(path: str | Path | None = None) -> list[Any]:
    """The IU reports (`biomed.imaging.reports.iu.Report`): the cached tarball by default
    (`DataNotFetched` naming ``biomed data fetch iu_reports`` when absent), a tarball, or the
    ``reports.jsonl`` that the quickstart's reports stage exports."""
    from biomed.imaging.reports.iu import Report, read_reports

    if path is None or not str(path).endswith(".jsonl"):
        return read_reports(path)
    p = Path(path).expanduser()
    out = []
    try:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(Report.from_dict(json.loads(line)))
                    except (ValueError, KeyError, TypeError) as e:
                        raise InputError(p, f"line {n}: not a report record ({e})") from None
    except OSError as e:
        raise InputError(p, f"cannot read the reports ({e.strerror or e})") from None
    if not out:
        raise InputError(p, "no reports in the file")
    return out


def build_bank(clip: Any, reports: Sequence[Any], *, source: str = "IU reports",
               batch_size: int = 256) -> ReportBank:
    """Embed the distinct texts of ``reports`` (objects with ``id`` and ``text``) with a loaded
    CLIP (`biomed.imaging.clip.model.LoadedClip`); reports without text are left out."""
    from biomed.imaging.clip.model import encode_texts

    by_text: dict[str, list[str]] = {}
    for r in reports:
        text = " ".join(str(r.text or "").split())
        if text:
            by_text.setdefault(text, []).append(str(r.id))
    if not by_text:
        raise InputError(source, "no report text to embed")
    texts = list(by_text)
    device = _device(clip.model)
    emb = encode_texts(clip.model, clip.tokenizer, texts, batch_size=batch_size, device=device)
    return ReportBank(texts, [tuple(by_text[t]) for t in texts], emb.float().cpu(),
                      sum(len(v) for v in by_text.values()), source)


def image_embedding(clip: Any, images: np.ndarray) -> torch.Tensor:
    """Unit CLIP embeddings (N x D) of workbench images (H x W or N x H x W, any size: squashed
    to the model's input as `zero_shot_scores` does)."""
    from biomed.imaging.clip.model import encode_images, fit_images

    arr = np.asarray(images, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr
    pp = clip.preprocess_cfg
    return encode_images(clip.model, fit_images(arr, pp), pp, device=_device(clip.model))


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# how often retrieval finds the right report


@dataclass(frozen=True)
class RetrievalRate:
    """Image-to-report recall@k: the fraction of images whose own report is among the top k."""

    recall: dict[int, float]
    chance: dict[int, float]  # the same under a random ranking
    images: int
    candidates: int | None  # texts searched
    source: str  # what was measured, in words

    def sentence(self, bank_texts: int | None = None) -> str:
        """One paragraph for the page."""
        ks = sorted(self.recall)
        found = ", ".join(f"top {k}: {100 * self.recall[k]:.0f}%" for k in ks)
        chance = ", ".join(f"{100 * self.chance[k]:.2g}%" for k in ks if k in self.chance)
        among = f" among {self.candidates:,} candidate texts" if self.candidates else ""
        text = (f"How often retrieval finds the right report: for {self.images:,} held-out "
                f"phantom images{among}, the image's own report was in the {found}"
                + (f" (by chance: {chance})" if chance else "") + f". Source: {self.source}.")
        if bank_texts and self.candidates and bank_texts > self.candidates:
            text += (f" The bank searched here holds {bank_texts:,} texts, more than that test, "
                     "so expect lower rates here.")
        return text


def rate_from_metrics(folders: Iterable[str | Path]) -> RetrievalRate | None:
    """The image-to-text recall of the first ``metrics.json`` in ``folders`` that has one (a
    train-clip run, or the quickstart's clip stage); None when none has."""
    for folder in folders:
        path = Path(folder) / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rate = _rate_of(metrics, path)
        if rate is not None:
            return rate
    return None


def _rate_of(metrics: Mapping[str, Any], path: Path) -> RetrievalRate | None:
    if not isinstance(metrics, Mapping):
        return None
    ev = metrics.get("evaluation") if isinstance(metrics.get("evaluation"), Mapping) else {}
    ret = ev.get("retrieval") if isinstance(ev.get("retrieval"), Mapping) else {}
    i2t = ret.get("image_to_text") if isinstance(ret.get("image_to_text"), Mapping) else {}
    flat = {k[len("i2t_"):]: v for k, v in metrics.items() if str(k).startswith("i2t_")}
    numbers = i2t or flat
    recall = {int(k[2:]): float(v) for k, v in numbers.items()
              if str(k).startswith("R@") and str(k)[2:].isdigit() and _finite(v)}
    if not recall:
        return None
    chance = {int(k[7:]): float(v) for k, v in numbers.items()
              if str(k).startswith("chance@") and str(k)[7:].isdigit() and _finite(v)}
    images = ret.get("images") or ev.get("items") or 0
    split = metrics.get("eval_split") or "test"
    return RetrievalRate(recall, chance, int(images), ret.get("texts"),
                         f"the CLIP run's {split}-split evaluation ({path})")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and np.isfinite(v)


def measure_rate(clip: Any, bank: ReportBank, images: np.ndarray, report_ids: Sequence[str],
                 ks: Sequence[int] = KS,
                 source: str = "measured at launch, searching this bank") -> RetrievalRate:
    """Recall@k of each image's own report text in the whole bank (identical texts count as
    the same report, as `biomed.imaging.clip.evaluate` counts them). Images whose report is not
    in the bank are left out."""
    keep = [i for i, rid in enumerate(report_ids) if bank.index_of(str(rid)) is not None]
    if not keep:
        raise InputError(source, "none of the sample's reports is in the report bank")
    target = torch.tensor([bank.index_of(str(report_ids[i])) for i in keep])
    sim = bank.scores(image_embedding(clip, np.asarray(images)[keep]))
    # rank of the right text: how many texts score strictly higher
    rank = (sim > sim.gather(1, target[:, None])).sum(dim=1)
    n = len(bank)
    recall = {int(k): float((rank < k).float().mean()) for k in ks}
    chance = {int(k): min(1.0, k / n) for k in ks}
    return RetrievalRate(recall, chance, len(keep), n, source)


def phantom_sample(reports: Sequence[Any], n: int, size: int | tuple[int, int],
                   seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Up to ``n`` phantom_iu test-split images (one render per report, no templates) and their
    report ids: rendered in this process from the first reports until ``n`` test rows exist
    (the split is a hash of the report id, about one report in ten)."""
    from biomed.imaging.phantom.dataset import PhantomIU

    side = size if isinstance(size, int) else int(max(size))
    ds = PhantomIU(list(reports), size=side, renders_per_report=1, templates_per_finding=0,
                   split="test", seed=seed, cache_dir=None, max_reports=max(20, 12 * int(n)),
                   progress=False, workers=1)
    take = list(range(min(int(n), len(ds))))
    images = np.stack([ds[i]["image"] for i in take]) if take else np.zeros((0, side, side))
    return images.astype(np.float32), [str(ds.metadata["report_id"][i]) for i in take]
