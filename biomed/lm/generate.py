"""`biomed generate-text`: sampled continuations of prompts, batched, with the KV cache.

Prompts come from ``prompt=`` or ``prompts_file=`` (one per line, or JSON lines with a
``prompt`` field). Batches of prompts are left-padded and decoded together by transformers'
``generate`` with the key/value cache (each new token attends to cached keys instead of
re-running the prefix), nucleus sampling (``top_p``) at ``temperature`` (0: greedy), until
``max_new_tokens`` or the end-of-text token. ``samples.jsonl`` gets one line per sample; the
same seed, prompts and ``batch_size`` give the same samples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from biomed import runs
from biomed.errors import ConfigError, InputError
from biomed.hydra_app import hydra_app


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise InputError(path, "no such prompts file")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        prompts = []
        for n, line in enumerate(lines, 1):
            if line.lstrip().startswith("{"):
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise InputError(path, f"line {n}: a JSON line needs a \"prompt\" ({e})") \
                        from e
            else:
                prompts.append(line)
        if not prompts:
            raise InputError(path, "no prompts")
        return prompts
    if not prompt:
        raise ConfigError("give prompt=... or prompts_file=...")
    return [str(prompt)]


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
             temperature: float = 0.8, top_p: float = 0.95, num_samples: int = 1,
             batch_size: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Samples for every prompt: dicts with prompt, sample index, text, new token count and
    whether the model ended the text itself (end-of-text token)."""
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
    from biomed.lm.model import context_length

    device = next(model.parameters()).device
    limit = context_length(model)
    if max_new_tokens >= limit:
        raise ConfigError(f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the "
                          f"model's context of {limit} tokens")
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    tokenizer.truncation_side = "left"  # a long prompt keeps its end
    sampling = temperature > 0
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "use_cache": True,
                               "do_sample": sampling, "num_return_sequences": num_samples,
                               "pad_token_id": tokenizer.pad_token_id,
                               "eos_token_id": tokenizer.eos_token_id}
    if sampling:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    torch.manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                        max_length=limit - max_new_tokens, add_special_tokens=False)
        if enc["input_ids"].shape[1] == 0:  # empty prompts: start from end-of-text
            enc = {"input_ids": torch.full((len(batch), 1), tokenizer.eos_token_id),
                   "attention_mask": torch.ones((len(batch), 1), dtype=torch.long)}
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            seqs = model.generate(**enc, **options)
        new = seqs[:, enc["input_ids"].shape[1]:].cpu()
        for r in range(new.shape[0]):
            ids = new[r].tolist()
            finished = tokenizer.eos_token_id in ids
            if finished:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            while ids and ids[-1] == tokenizer.pad_token_id:  # padding after an early stop
                ids.pop()
            out.append({"prompt": batch[r // num_samples], "sample": r % num_samples,
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "new_tokens": len(ids), "finished": finished})
    return out


def write_samples(path: Path, samples: list[dict], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps({**s, **meta}, ensure_ascii=False) + "\n")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample continuations (``conf/generate_text.yaml``) into ``samples.jsonl``."""
    from biomed.lm.model import load_for_inference

    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompts_file"))
    with runs.experiment(cfg, [cfg.prompts_file] if cfg.get("prompts_file") else []) as run_dir:
        model, tokenizer, folder = load_for_inference(cfg.model_dir, cfg.device, cfg.dtype)
        t0 = time.perf_counter()
        samples = generate(model, tokenizer, prompts, max_new_tokens=int(cfg.max_new_tokens),
                           temperature=float(cfg.temperature), top_p=float(cfg.top_p),
                           num_samples=int(cfg.num_samples), batch_size=int(cfg.batch_size),
                           seed=int(cfg.seed))
        seconds = time.perf_counter() - t0
        meta = {"model": str(folder), "seed": int(cfg.seed), "temperature": cfg.temperature,
                "top_p": cfg.top_p, "max_new_tokens": int(cfg.max_new_tokens)}
        write_samples(run_dir / "samples.jsonl", samples, meta)
        new_tokens = sum(s["new_tokens"] for s in samples)
        metrics = {"samples": len(samples), "prompts": len(prompts), "new_tokens": new_tokens,
                   "seconds": seconds, "tokens_per_s": new_tokens / seconds if seconds else None,
                   "samples_file": str(run_dir / "samples.jsonl"), "model_dir": str(folder),
                   "key_metrics": ["samples", "tokens_per_s"]}
        runs.finish_run(run_dir, metrics)
    for s in samples[:3]:
        print(f"--- {s['prompt']!r}\n{s['prompt']}{s['text']}")
    print(f"generate-text: {len(samples)} sample(s), {new_tokens} new tokens in {seconds:.1f} s; "
          f"{run_dir / 'samples.jsonl'}")
    return metrics


main = hydra_app("generate_text")(run)

if __name__ == "__main__":
    main()
