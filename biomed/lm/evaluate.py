"""`biomed evaluate-lm`: validation perplexity and multiple-choice accuracy of a causal LM.

Works on a train-lm run folder, its ``model/``, or any local Hugging Face causal-LM folder (a
BioMedLM download, say), always with the model's own tokenizer.

- **Perplexity** on the held-out PubMed abstracts (the same stable-hash split as train-lm),
  tokenized with the model's tokenizer (cached like train-lm's token files), with the unigram
  perplexity of the same tokens when the training split is tokenized too, and bits per UTF-8
  byte (comparable across tokenizers).
- **Multiple choice** (PubMedQA-style and MedQA-style JSON, formats in ``docs/lm.md``): each
  option is scored by the log-likelihood the model gives its tokens after the question prompt;
  the prediction is the best option by the raw sum (``acc``) and by the mean per token
  (``acc_norm``, which does not favour short options). Both come with a bootstrap 95% CI over
  questions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from biomed import runs, stats
from biomed.errors import ConfigError, InputError
from biomed.hydra_app import hydra_app

# ---------------------------------------------------------------------------------------------
# multiple-choice files


@dataclass
class MCItem:
    id: str
    prompt: str  # ends where the answer starts (e.g. "...\nAnswer:")
    options: list[str]  # each scored as " " + option after the prompt
    answer: int  # index into options


PUBMEDQA_OPTIONS = ["yes", "no", "maybe"]


def _read_json_or_jsonl(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(path, f"line {n}: neither a JSON document nor JSON lines "
                                           f"({e.msg})") from e
        return rows


def _records(data: Any) -> list[tuple[str, dict]]:
    """(id, record) pairs from a dict keyed by id (PubMedQA's files) or a list of records."""
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items()]
    if isinstance(data, list):
        return [(str(r.get("id", r.get("pubid", i))) if isinstance(r, dict) else str(i), r)
                for i, r in enumerate(data)]
    raise ValueError("expected a JSON object keyed by id, a JSON list or JSON lines")


def detect_format(data: Any) -> str:
    recs = _records(data)
    if not recs or not isinstance(recs[0][1], dict):
        raise ValueError("no question records")
    keys = set(recs[0][1])
    if keys & {"QUESTION", "final_decision"}:
        return "pubmedqa"
    if "options" in keys:
        return "medqa"
    raise ValueError(f"cannot tell the format from the keys {sorted(keys)}")


def _pubmedqa_item(rid: str, r: dict) -> MCItem:
    question = r.get("QUESTION", r.get("question"))
    ctx = r.get("CONTEXTS")
    labels = r.get("LABELS") or []
    if ctx is None and isinstance(r.get("context"), dict):  # the Hugging Face layout
        ctx, labels = r["context"].get("contexts", []), r["context"].get("labels", [])
    if ctx is None:
        ctx = r.get("context") or []
    if isinstance(ctx, str):
        ctx = [ctx]
    answer = str(r.get("final_decision", "")).strip().lower()
    if not question or answer not in PUBMEDQA_OPTIONS:
        raise ValueError(f"record {rid}: needs QUESTION and final_decision yes/no/maybe")
    parts = [f"{lab.strip().upper()}: {c}" if lab else c
             for c, lab in zip(ctx, [*labels, *[""] * len(ctx)], strict=False)]
    context = "\n".join(parts)
    prompt = (f"Context: {context}\n" if context else "") + f"Question: {question}\nAnswer:"
    return MCItem(rid, prompt, list(PUBMEDQA_OPTIONS), PUBMEDQA_OPTIONS.index(answer))


def _medqa_item(rid: str, r: dict) -> MCItem:
    question, opts = r.get("question"), r.get("options")
    if not question or not opts:
        raise ValueError(f"record {rid}: needs question and options")
    if isinstance(opts, dict):  # {"A": "...", "B": "..."}
        keys, texts = [str(k) for k in opts], [str(v) for v in opts.values()]
    elif all(isinstance(o, dict) for o in opts):  # [{"key": "A", "value": "..."}]
        keys, texts = [str(o["key"]) for o in opts], [str(o["value"]) for o in opts]
    else:  # ["...", "..."]
        keys, texts = [chr(ord("A") + i) for i in range(len(opts))], [str(o) for o in opts]
    idx = r.get("answer_idx")
    if idx is None and isinstance(r.get("answer"), int):
        idx = r["answer"]
    if isinstance(idx, int) and not isinstance(idx, bool):
        answer = idx
    elif idx is not None and str(idx) in keys:
        answer = keys.index(str(idx))
    elif r.get("answer") in texts:
        answer = texts.index(r["answer"])
    else:
        raise ValueError(f"record {rid}: answer_idx/answer {idx or r.get('answer')!r} is not "
                         "one of the options")
    if not 0 <= answer < len(texts):
        raise ValueError(f"record {rid}: answer index {answer} out of range")
    return MCItem(rid, f"Question: {question}\nAnswer:", texts, answer)


def load_mc(path: str | Path, fmt: str = "auto") -> list[MCItem]:
    """The questions of a PubMedQA-style or MedQA-style file (``fmt``: auto|pubmedqa|medqa)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such multiple-choice file")
    data = _read_json_or_jsonl(path)
    try:
        fmt = detect_format(data) if fmt == "auto" else fmt
        make = {"pubmedqa": _pubmedqa_item, "medqa": _medqa_item}[fmt]
        items = [make(rid, r) for rid, r in _records(data)]
    except KeyError:
        raise InputError(path, f"unknown format {fmt!r} (auto, pubmedqa or medqa)") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(path, str(e)) from e
    if not items:
        raise InputError(path, "no questions")
    return items


# ---------------------------------------------------------------------------------------------
# scoring


def score_options(model: torch.nn.Module, tokenizer, items: Sequence[MCItem], *,
                  context: int, batch_size: int = 16, device="cpu",
                  prompt_max_tokens: int | None = None) -> list[list[tuple[float, int]]]:
    """(summed log-likelihood, token count) of every option of every item.

    The prompt and the option are tokenized separately (the option with its leading space), so
    every option is scored on the same prompt tokens; a prompt too long for the context loses
    its beginning, never the option.
    """
    pairs = []  # (item index, option index, prompt ids, option ids)
    for i, it in enumerate(items):
        p_ids = tokenizer(it.prompt, add_special_tokens=False, verbose=False)["input_ids"]
        for j, opt in enumerate(it.options):
            o_ids = tokenizer(" " + opt.strip(), add_special_tokens=False,
                              verbose=False)["input_ids"]
            if not o_ids:
                raise InputError(it.id, f"option {j} is empty")
            keep = context - len(o_ids)
            if prompt_max_tokens:
                keep = min(keep, prompt_max_tokens)
            if keep < 1:
                raise InputError(it.id, f"option {j} ({len(o_ids)} tokens) does not fit the "
                                        f"context of {context}")
            pairs.append((i, j, p_ids[-keep:], o_ids))
    scores: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(it.options) for it in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(pairs)), key=lambda k: -len(pairs[k][2]) - len(pairs[k][3]))
    for start in range(0, len(order), batch_size):
        chunk = [pairs[k] for k in order[start:start + batch_size]]
        width = max(len(p) + len(o) for _, _, p, o in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (_, _, p, o) in enumerate(chunk):
            seq = torch.tensor(p + o)
            ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False).logits
        for r, (i, j, p, o) in enumerate(chunk):
            rows = logits[r, len(p) - 1:len(p) + len(o) - 1].float()  # predict the option tokens
            logp = torch.log_softmax(rows, dim=-1)
            target = torch.tensor(o, device=logp.device)
            scores[i][j] = (float(logp.gather(1, target[:, None]).sum()), len(o))
    return scores


def mc_metrics(items: Sequence[MCItem], scores, *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    raw = np.array([int(np.argmax([s for s, _ in sc])) for sc in scores])
    norm = np.array([int(np.argmax([s / n for s, n in sc])) for sc in scores])
    answers = np.array([it.answer for it in items])
    c_raw, c_norm = (raw == answers).astype(float), (norm == answers).astype(float)
    return {"n": len(items), "acc": float(c_raw.mean()),
            "acc_ci": stats.mean_ci(c_raw, n_boot, seed),
            "acc_norm": float(c_norm.mean()),
            "acc_norm_ci": stats.mean_ci(c_norm, n_boot, seed + 1),
            "chance": float(np.mean([1.0 / len(it.options) for it in items])),
            "predictions": raw.tolist(), "predictions_norm": norm.tolist()}


# ---------------------------------------------------------------------------------------------
# the command


def validation_metrics(model, tokenizer, cfg: DictConfig, device, log=print) -> dict[str, Any]:
    from biomed.lm import tokens as tok_data
    from biomed.lm.model import context_length, token_nll

    _, _, _, folder = tok_data.prepare_data(cfg, splits=("val",), tokenizer=tokenizer, log=log)
    ctx = context_length(model, cfg.get("context"))
    val = tok_data.TokenChunks(tok_data.load_tokens(folder, "val"), ctx,
                               max_tokens=cfg.get("val_max_tokens"))
    if len(val) == 0:
        raise InputError(folder, f"fewer validation tokens than one context of {ctx}")
    nll, n = token_nll(model, val, int(cfg.batch_size), device)
    val_stats = tok_data.split_stats(folder, "val")
    out: dict[str, Any] = {"val_loss": nll / n, "val_ppl": math.exp(nll / n),
                           "val_tokens_evaluated": n, "context": ctx,
                           "val_bits_per_byte": nll / n * val_stats["tokens"] / val_stats["bytes"]
                           / math.log(2)}
    if (Path(folder) / "train.json").is_file():  # the unigram floor needs training-split counts
        vocab = max(len(tokenizer), int(model.config.vocab_size))
        out["unigram_ppl"] = tok_data.unigram_perplexity(tok_data.load_tokens(folder, "train"),
                                                         val.targets(), vocab)
        out["ppl_ratio"] = out["unigram_ppl"] / out["val_ppl"]
    return out


def _mc_specs(mc) -> list[dict]:
    specs = []
    for entry in mc or []:
        spec = {"path": entry} if isinstance(entry, str) else dict(entry)
        if "path" not in spec:
            raise ConfigError(f"mc entry {entry}: needs a path")
        spec.setdefault("format", "auto")
        spec.setdefault("name", Path(spec["path"]).stem)
        specs.append(spec)
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"mc: names {names} repeat; give each file a distinct name")
    return specs


def evaluate(cfg: DictConfig, run_dir: Path, log=print) -> dict[str, Any]:
    """Evaluate ``cfg.model_dir``; writes ``mc_<name>.jsonl`` per-question records."""
    from biomed.lm.model import context_length, load_for_inference

    model, tokenizer, folder = load_for_inference(cfg.model_dir, cfg.device, cfg.dtype)
    device = next(model.parameters()).device
    metrics: dict[str, Any] = {"model_dir": str(folder)}
    key = []
    if cfg.val:
        metrics.update(validation_metrics(model, tokenizer, cfg, device, log=log))
        key += ["val_ppl", "unigram_ppl"] if "unigram_ppl" in metrics else ["val_ppl"]
        log(f"evaluate-lm: validation perplexity {metrics['val_ppl']:.2f}"
            + (f" (unigram {metrics['unigram_ppl']:.1f})" if "unigram_ppl" in metrics else ""))
    ctx = context_length(model, cfg.get("context"))
    for spec in _mc_specs(OmegaConf.to_container(cfg.mc, resolve=True) if cfg.mc else []):
        items = load_mc(spec["path"], spec["format"])
        if cfg.get("mc_max_items"):
            items = items[:int(cfg.mc_max_items)]
        scores = score_options(model, tokenizer, items, context=ctx,
                               batch_size=int(cfg.batch_size), device=device,
                               prompt_max_tokens=cfg.get("mc_prompt_max_tokens"))
        m = mc_metrics(items, scores, n_boot=int(cfg.bootstrap), seed=int(cfg.seed))
        name = spec["name"]
        with (run_dir / f"mc_{name}.jsonl").open("w", encoding="utf-8") as f:
            for it, sc, p, pn in zip(items, scores, m["predictions"], m["predictions_norm"],
                                     strict=True):
                f.write(json.dumps({"id": it.id, "answer": it.answer, "pred": p, "pred_norm": pn,
                                    "loglik": [s for s, _ in sc],
                                    "tokens": [n for _, n in sc]}) + "\n")
        for k in ("n", "acc", "acc_ci", "acc_norm", "acc_norm_ci", "chance"):
            metrics[f"{name}_{k}"] = m[k]
        metrics[f"{name}_file"] = str(spec["path"])
        key += [f"{name}_acc", f"{name}_acc_norm"]
        log(f"evaluate-lm: {name}: {m['n']} questions, accuracy {m['acc']:.3f} "
            f"[{m['acc_ci'][0]:.3f}, {m['acc_ci'][1]:.3f}], length-normalised "
            f"{m['acc_norm']:.3f} [{m['acc_norm_ci'][0]:.3f}, {m['acc_norm_ci'][1]:.3f}] "
            f"(chance {m['chance']:.3f})")
    metrics["key_metrics"] = key
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a causal LM (``conf/evaluate_lm.yaml``) in its run folder."""
    files = [s["path"] for s in _mc_specs(OmegaConf.to_container(cfg.mc, resolve=True)
                                          if cfg.mc else [])]
    with runs.experiment(cfg, files) as run_dir:
        metrics = evaluate(cfg, run_dir)
        runs.finish_run(run_dir, metrics)
    return metrics


main = hydra_app("evaluate_lm")(run)

if __name__ == "__main__":
    main()
