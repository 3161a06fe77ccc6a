"""`biomed quickstart` composed from the shipped config and run in-process on fixtures."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from biomed.config import compose
from biomed.errors import ConfigError
from biomed.quickstart import run

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def iu_tgz(tmp_path):
    tgz = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(FIX / "iu", arcname="ecgen-radiology", recursive=False)
        for xml in sorted((FIX / "iu").glob("*.xml"), key=lambda p: p.name):
            tar.add(xml, arcname=f"ecgen-radiology/{xml.name}")
    return tgz


def test_quickstart_runs_stages_then_skips_them(tmp_path, iu_tgz, capsys):
    files = [str(FIX / "pubmed" / "baseline.xml"), str(FIX / "pubmed" / "update.xml")]
    cfg = compose("quickstart", [f"paths.run_dir={tmp_path / 'run'}", "stages=[corpus,reports]",
                                 f"pubmed.files=[{','.join(files)}]", f"reports.file={iu_tgz}"])
    first = run(cfg)
    run_dir = tmp_path / "run"
    corpus = [json.loads(line) for line in (run_dir / "corpus/pubmed.jsonl").read_text().splitlines()]
    assert first["pubmed_abstracts"] == len(corpus) > 0
    assert first["iu_reports"] == 4
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").exists()
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert {Path(d["path"]).name for d in prov["data_files"]} == \
        {"baseline.xml", "update.xml", "NLMCXR_reports.tgz"}
    capsys.readouterr()

    (run_dir / "corpus/pubmed.jsonl").write_text("")  # a skipped stage must not rewrite outputs
    second = run(cfg)
    assert "done earlier, skipped" in capsys.readouterr().out
    assert (run_dir / "corpus/pubmed.jsonl").read_text() == ""
    assert second["pubmed_abstracts"] == first["pubmed_abstracts"]

    forced = run(compose("quickstart", [*cfg_overrides(tmp_path, files, iu_tgz), "force=true"]))
    assert forced["pubmed_abstracts"] == first["pubmed_abstracts"]
    assert (run_dir / "corpus/pubmed.jsonl").read_text() != ""


def cfg_overrides(tmp_path, files, iu_tgz):
    return [f"paths.run_dir={tmp_path / 'run'}", "stages=[corpus,reports]",
            f"pubmed.files=[{','.join(files)}]", f"reports.file={iu_tgz}"]


def test_failed_stage_marks_the_run_failed(tmp_path):
    cfg = compose("quickstart", [f"paths.run_dir={tmp_path}", "stages=[reports]",
                                 f"reports.file={tmp_path / 'missing.tgz'}"])
    with pytest.raises(Exception, match="missing.tgz"):
        run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "missing.tgz" in metrics["error"]


def test_unknown_stage_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        run(compose("quickstart", [f"paths.run_dir={tmp_path}", "stages=[nope]"]))


def test_changed_inputs_rerun_the_stage(tmp_path, capsys):
    one = [str(FIX / "pubmed" / "baseline.xml")]
    both = [*one, str(FIX / "pubmed" / "update.xml")]

    def cfg_for(files):
        return compose("quickstart", [f"paths.run_dir={tmp_path}", "stages=[corpus]",
                                      f"pubmed.files=[{','.join(files)}]"])

    first = run(cfg_for(both))
    capsys.readouterr()
    changed = run(cfg_for(one))
    assert "config or data changed, rerunning" in capsys.readouterr().out
    assert changed["pubmed_records_read"] < first["pubmed_records_read"]
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [Path(d["path"]).name for d in prov["data_files"]] == ["baseline.xml"]


def _quoted(items):
    return "[" + ",".join(f'"{i}"' for i in items) + "]"


def smoke_cfg(tmp_path, stages):
    """The quickstart at debug=smoke size (every stage composes its command with debug=smoke),
    with the phantom cache in tmp_path."""
    cache = _quoted([f"data.cache_dir={tmp_path / 'phantom_cache'}"])
    return compose("quickstart", [f"paths.run_dir={tmp_path / 'run'}", "debug=smoke",
                                  f"stages=[{','.join(stages)}]",
                                  *(f"stage_overrides.{s}={cache}" for s in stages)])


@pytest.mark.data
def test_imaging_stages_run_each_command_config_with_stage_overrides(tmp_path):
    """phantom -> classifier -> clip at debug=smoke size: 40 real IU reports at 32 px, 3 steps."""
    m = run(smoke_cfg(tmp_path, ["phantom", "classifier", "clip"]))
    run_dir = tmp_path / "run"
    assert m["phantom_images"] == m["phantom_reports_used"] + m["phantom_templates"]
    assert m["phantom_reports_used"] <= 40
    assert (run_dir / "phantom" / "examples.png").is_file()
    assert m["classifier_steps"] == 3 and m["clip_steps"] == 3
    assert (run_dir / "classifier/classifier/model.safetensors").is_file()
    assert (run_dir / "clip/clip/open_clip_config.json").is_file()
    # the stage ran the command's own config, composed with debug=smoke (32 px, not 128)
    assert json.loads((run_dir / "classifier/metrics.json").read_text())["n_train"] > 0
    saved = json.loads((run_dir / "classifier/classifier/config.json").read_text())
    assert saved["input_size"] == [32, 32]


@pytest.mark.data
def test_an_edited_command_config_reruns_its_stage(tmp_path, monkeypatch, capsys):
    """The imaging stages' fingerprints cover the configs they compose: editing
    conf/classifier/small_cnn.yaml reruns the classifier stage (and not the phantom stage);
    an unchanged rerun does no work."""
    import biomed.config

    conf = tmp_path / "conf"
    shutil.copytree(biomed.config.config_dir(), conf)
    monkeypatch.setattr(biomed.config, "config_dir", lambda: conf)
    records = tmp_path / "run" / "stages"

    run(smoke_cfg(tmp_path, ["phantom", "classifier"]))
    first = {p.name: p.read_text() for p in records.iterdir()}
    capsys.readouterr()

    run(smoke_cfg(tmp_path, ["phantom", "classifier"]))
    out = capsys.readouterr().out
    assert "phantom: done earlier, skipped" in out and "classifier: done earlier, skipped" in out
    assert {p.name: p.read_text() for p in records.iterdir()} == first

    small_cnn = conf / "classifier" / "small_cnn.yaml"
    text = small_cnn.read_text()
    assert "  weight_decay: 0.05\n" in text
    small_cnn.write_text(text.replace("  weight_decay: 0.05\n", "  weight_decay: 0.04\n"))
    run(smoke_cfg(tmp_path, ["phantom", "classifier"]))
    out = capsys.readouterr().out
    assert "phantom: done earlier, skipped" in out
    assert "classifier: its config or data changed, rerunning" in out
    again = {p.name: p.read_text() for p in records.iterdir()}
    assert again["phantom.json"] == first["phantom.json"]
    assert again["classifier.json"] != first["classifier.json"]


@pytest.mark.data
def test_the_smoke_quickstart_runs_every_stage_and_ends_in_its_report(tmp_path):
    """`biomed quickstart debug=smoke`: every stage, small, in one process, ending in
    report.html (the augment stage uses the smoke diffusion model and the oracle)."""
    cfg = compose("quickstart", [f"paths.run_dir={tmp_path / 'run'}", "debug=smoke"])
    assert list(cfg.stages)[-2:] == ["augment", "report"]
    m = run(cfg)
    run_dir = tmp_path / "run"
    for stage in cfg.stages:
        assert (run_dir / "stages" / f"{stage}.json").is_file(), stage
        assert f"{stage}_seconds" in m, stage
    page = (run_dir / "report.html").read_text()
    assert "augment/report.html" in page and "http://" not in page and "https://" not in page
    summary = json.loads((run_dir / "augment" / "metrics.json").read_text())
    sources = {g["source"] for g in summary["gains"]}
    assert {"diffusion", "phantom_oracle", "duplicates"} <= sources
    assert summary["synthetic"]["diffusion"]["label_accuracy"]  # the classifier stage's model
    assert any(k.startswith("augment_gain_diffusion_mix") for k in m)
