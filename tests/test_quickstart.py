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
