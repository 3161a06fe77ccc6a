"""biomed.runs: one list of data files per data config, whichever command reads it."""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from biomed import runs
from biomed.cli import EXPERIMENTS
from biomed.config import compose

# every command that reads `cfg.data` and records it in provenance.json
DATA_COMMANDS = {"train-classifier": "train_classifier", "train-clip": "train_clip",
                 "train-diffusion": "train_diffusion",
                 "evaluate-generation": "evaluate_generation"}


def folder_csv(tmp_path: Path) -> Path:
    root = tmp_path / "xrays"
    root.mkdir()
    (root / "labels.csv").write_text("path,effusion\na.png,1\n")
    return root


def test_data_files_of_each_kind_of_data_config(tmp_path):
    root = folder_csv(tmp_path)
    cfg = compose("train_classifier", ["data=folder_csv", f"data.root={root}"])
    assert runs.data_files(cfg) == [str(root), str(root / "labels.csv")]  # csv under root
    cfg = compose("train_classifier", ["data=chexpert", f"data.root={root}",
                                       "data.csv_files=[train.csv,/abs/valid.csv]"])
    assert runs.data_files(cfg) == [str(root), str(root / "train.csv"), "/abs/valid.csv"]
    cfg = compose("train_classifier", ["data=openi", f"data.image_dir={root}",
                                       f"paths.cache_dir={tmp_path}"])
    assert runs.data_files(cfg) == [str(root), str(tmp_path / "iu_reports/NLMCXR_reports.tgz")]
    cfg = compose("train_classifier", ["data=nih14"])  # root: ??? (not given yet)
    assert runs.data_files(cfg) == []
    cfg = compose("train_lm", ["data=pubmed", f"paths.cache_dir={tmp_path}"])
    assert runs.data_files(cfg) == [str(tmp_path / "pubmed" / n) for n in
                                    ("pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz")]
    assert runs.data_files(OmegaConf.create({"seed": 0})) == []


class _Recorded(Exception):
    pass


def recorded_data_files(command: str, cfg, monkeypatch) -> list[str]:
    """What ``run(cfg)`` of ``command`` hands to ``runs.experiment`` (stopped right there)."""
    seen: list[list[str]] = []

    @contextmanager
    def experiment(cfg, data_files=()):
        seen.append([str(f) for f in data_files])
        raise _Recorded
        yield  # pragma: no cover

    monkeypatch.setattr(runs, "experiment", experiment)
    module = importlib.import_module(EXPERIMENTS[command][0])
    if command == "evaluate-generation":  # no pipeline needed to reach the provenance
        monkeypatch.setattr(module, "make_generator", lambda cfg, device=None: None)
    with pytest.raises(_Recorded):
        module.run(cfg)
    return seen[0]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    from tests.helpers.classifier import tiny_classifier_dir

    return tiny_classifier_dir(tmp_path_factory.mktemp("clf"), ["effusion"])


@pytest.mark.parametrize("data", ["folder_csv", "phantom_iu"])
def test_every_command_records_the_same_files_for_the_same_data(data, tmp_path, monkeypatch,
                                                                classifier_dir):
    root = folder_csv(tmp_path)
    overrides = ([f"data.root={root}"] if data == "folder_csv" else
                 [f"data.reports={tmp_path / 'not_fetched_yet.tgz'}"])
    got = {}
    for command, config in DATA_COMMANDS.items():
        extra = ([f"model_dir={tmp_path}", f"classifier_dir={classifier_dir}", "device=cpu"]
                 if command == "evaluate-generation" else [])
        cfg = compose(config, [f"data={data}", *overrides, *extra,
                               f"paths.run_dir={tmp_path / command}"])
        got[command] = recorded_data_files(command, cfg, monkeypatch)
        assert got[command] == runs.data_files(cfg)
    assert all(files == got["train-classifier"] for files in got.values()), got
    assert got["train-classifier"] == ([str(root), str(root / "labels.csv")]
                                       if data == "folder_csv"
                                       else [str(tmp_path / "not_fetched_yet.tgz")])


def test_provenance_digests_the_files_and_names_the_folders(tmp_path):
    root = folder_csv(tmp_path)
    cfg = compose("train_classifier", ["data=folder_csv", f"data.root={root}",
                                       f"paths.run_dir={tmp_path / 'run'}"])
    run_dir = runs.start_run(cfg, runs.data_files(cfg))
    prov = json.loads((run_dir / "provenance.json").read_text())["data_files"]
    assert prov[0] == {"path": str(root), "dir": True}
    assert prov[1]["path"] == str(root / "labels.csv") and len(prov[1]["sha256"]) == 64
