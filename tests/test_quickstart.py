"""`biomed quickstart` composed from the shipped config and run in-process on fixtures."""

from __future__ import annotations

import json
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


@pytest.mark.data
def test_imaging_stages_run_each_command_config_with_stage_overrides(tmp_path):
    """phantom -> classifier -> clip on 40 real IU reports at 32 px, a few steps each."""
    data = ["data.max_reports=40", "data.size=32", "data.templates_per_finding=2",
            "data.progress=false", f"data.cache_dir={tmp_path / 'phantom_cache'}"]
    short = ["trainer.max_time_s=null", "trainer.max_steps=3", "trainer.progress=false",
             "trainer.tensorboard=false", "trainer.batch_size=8", "trainer.threads=1"]
    cfg = compose("quickstart", [
        f"paths.run_dir={tmp_path / 'run'}", "stages=[phantom,classifier,clip]",
        f"stage_overrides.phantom={_quoted(data)}",
        f"stage_overrides.classifier={_quoted(data + short + ['eval.n_boot=10', 'eval.val_n_boot=10'])}",
        f"stage_overrides.clip={_quoted(data + short + ['eval.n_boot=10'])}"])
    m = run(cfg)
    run_dir = tmp_path / "run"
    assert m["phantom_images"] == 3 * m["phantom_reports_used"] + m["phantom_templates"]
    assert (run_dir / "phantom" / "examples.png").is_file()
    assert m["classifier_steps"] == 3 and m["clip_steps"] == 3
    assert (run_dir / "classifier/classifier/model.safetensors").is_file()
    assert (run_dir / "clip/clip/open_clip_config.json").is_file()
    # the stage ran the command's own config: its run folder has the classifier's metrics
    assert json.loads((run_dir / "classifier/metrics.json").read_text())["n_train"] > 0
