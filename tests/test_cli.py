"""The `biomed` command line, Hydra run folders, provenance and `biomed runs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biomed import runs, sources
from biomed.cli import EXPERIMENTS, TOOLS, main

ROOT = Path(__file__).resolve().parent.parent
needs_reports = pytest.mark.skipif(sources.status("iu_reports") != "cached",
                                   reason="run `biomed data fetch iu_reports` first")


def biomed(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "biomed", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def test_help_lists_every_command_once(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    shipped = {"quickstart", "train-lm", "evaluate-lm", "generate-text", "data", "pubmed",
               "dicom", "runs"}  # DESIGN's command table, as far as built
    assert shipped <= set(EXPERIMENTS) | set(TOOLS)
    for name in shipped | set(EXPERIMENTS) | set(TOOLS):
        assert sum(line.split()[:1] == [name] for line in out.splitlines()) == 1, name


def test_report_tools_print_the_tables_behind_the_phantom_labels(tmp_path, capsys):
    from biomed.imaging.reports.iu import Report
    from tests.helpers.phantom import make_tgz

    tgz = make_tgz(tmp_path / "NLMCXR_reports.tgz", [
        Report(id="CXR1", impression="No pleural effusion.", findings="Clear lungs.",
               mesh_major=["Pleural Effusion/left"]),
        Report(id="CXR2", impression="Heart is enlarged.", findings="", mesh_major=[
            "Cardiomegaly/mild"]),
        Report(id="CXR3", impression="Rib fracture.", findings="", mesh_major=[
            "Fractures, Bone/ribs"])])
    assert main(["reports", "findings", "--reports", str(tgz)]) == 0
    out = capsys.readouterr().out
    assert "reports / excluded by reason:" in out and "positives among the included" in out
    assert main(["reports", "mentions", "--reports", str(tgz)]) == 0
    out = capsys.readouterr().out
    assert "effusion: 1 included reports whose text does not support the label" in out
    assert "CXR1" in out and "negated" in out
    assert main(["reports", "findings", "--reports", str(tmp_path / "nope.tgz")]) == 2
    assert "nope.tgz: no such file" in capsys.readouterr().err


def test_lm_study_tool_reads_sweep_folders(tmp_path, capsys):
    assert main(["lm-study", str(tmp_path)]) == 1
    assert "no completed train-lm runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["lm-study", "--help"])
    assert "usage: biomed lm-study" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_library_error_is_one_line_and_nonzero(tmp_path):
    proc = biomed("pubmed", "extract", str(tmp_path / "missing.xml"), "--out",
                  str(tmp_path / "c.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing.xml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_list_shows_size_licence_status(tmp_path):
    proc = biomed("data", "list", "--json", env={"BIOMED_CACHE": str(tmp_path)})
    rows = json.loads(proc.stdout)
    assert {r["item"] for r in rows} == set(sources.ITEMS)
    assert all(r["status"] == "missing" and r["licence"] and r["size"] for r in rows)


def test_runs_table_newest_first(tmp_path):
    for i, (cmd, status) in enumerate([("train-lm", "completed"), ("quickstart", None)]):
        d = tmp_path / cmd / f"2026-01-0{i + 1}_00-00-00"
        runs.write_json(d / "provenance.json", {"command": cmd, "started": f"2026-01-0{i + 1}"})
        if status:
            runs.write_json(d / "metrics.json", {"status": status, "val_ppl": 12.5, "steps": 7,
                                                 "finished": f"2026-01-0{i + 1}T01:00:00"})
    stale = tmp_path / "quickstart" / "2026-01-02_00-00-00" / "metrics.json"
    runs.write_json(stale, {"status": "completed", "finished": "2026-01-01T23:00:00"})
    rows = runs.find_runs(tmp_path)
    assert [r["command"] for r in rows] == ["quickstart", "train-lm"]
    assert rows[0]["status"] == "running or killed"
    assert rows[1]["metrics"] == {"val_ppl": 12.5, "steps": 7}
    text = runs.format_runs(rows)
    assert "val_ppl=12.5" in text and text.index("quickstart") < text.index("train-lm")


def test_runs_on_a_missing_folder_is_an_error(tmp_path):
    proc = biomed("runs", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "nope: no such folder of runs" in proc.stderr


def test_output_side_errors_are_one_line(tmp_path):
    proc = biomed("data", "reports", "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_run_stamp_is_shared_by_processes_of_one_launch():
    """Two ranks started a second apart by one launcher agree on the run folder name."""
    code = ("import os, subprocess, sys, time\n"
            "env = {**os.environ, 'LOCAL_RANK': '0', 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2'}\n"
            "env.pop('BIOMED_RUN_STAMP', None)\n"
            "cmd = [sys.executable, '-c', 'from biomed.config import run_stamp; "
            "print(run_stamp())']\n"
            "a = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout\n"
            "time.sleep(1.2)\n"
            "b = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout\n"
            "print(a.strip(), b.strip())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert len(out) == 2 and out[0] == out[1]


@pytest.mark.data
@needs_reports
def test_quickstart_cli_writes_a_complete_run_folder_and_resumes(tmp_path):
    env = {"BIOMED_OUTPUTS": str(tmp_path / "outputs")}
    proc = biomed("quickstart", "experiment=quickstart_reports_only", env=env)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "outputs" / "quickstart" / "latest"
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["iu_reports"] == 3955
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["command"] == "quickstart" and prov["packages"]["torch"] == "2.14.1"
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    tgz = next(d for d in prov["data_files"] if d["path"].endswith("NLMCXR_reports.tgz"))
    assert tgz["sha256"] == sources.ITEMS["iu_reports"].members[0].sha256
    assert len((run / "reports" / "reports.jsonl").read_text().splitlines()) == 3955

    again = biomed("quickstart", "experiment=quickstart_reports_only", env=env)
    assert again.returncode == 0 and "done earlier, skipped" in again.stdout

    listing = biomed("runs", str(tmp_path / "outputs"))
    assert "quickstart" in listing.stdout and "iu_reports=3955" in listing.stdout


@pytest.mark.data
@needs_reports
def test_quickstart_debug_smoke_has_its_own_folder(tmp_path):
    env = {"BIOMED_OUTPUTS": str(tmp_path / "outputs")}
    proc = biomed("quickstart", "experiment=quickstart_reports_only", "debug=smoke", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "outputs" / "smoke" / "quickstart" / "latest" / "reports").is_dir()
    assert not (tmp_path / "outputs" / "quickstart").exists()


@pytest.mark.data
@needs_reports
def test_sweep_folders_spell_the_command(tmp_path):
    env = {"BIOMED_OUTPUTS": str(tmp_path / "outputs")}
    proc = biomed("quickstart", "-m", "experiment=quickstart_reports_only", "seed=0,1", env=env)
    assert proc.returncode == 0, proc.stderr
    sweeps = list((tmp_path / "outputs" / "quickstart" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        m = json.loads((sweeps[0] / job / "metrics.json").read_text())
        assert m["status"] == "completed"


def test_bad_override_is_a_clear_error(tmp_path):
    proc = biomed("quickstart", "stages=[nope]", env={"BIOMED_OUTPUTS": str(tmp_path)})
    assert proc.returncode != 0
    assert "unknown stage" in proc.stderr and "Traceback" not in proc.stderr
    failed = json.loads((tmp_path / "quickstart" / "latest" / "metrics.json").read_text()) \
        if (tmp_path / "quickstart" / "latest" / "metrics.json").exists() else None
    assert failed is None or failed["status"] == "failed"


def test_provenance_records_git_and_packages():
    state = runs.git_state(ROOT)
    assert set(state) == {"commit", "dirty"}
    versions = runs.package_versions(["torch", "definitely-not-installed-pkg"])
    assert versions["torch"] == "2.14.1" and versions["definitely-not-installed-pkg"] is None




@pytest.mark.data
@needs_reports
def test_data_reports_exports_jsonl(tmp_path):
    proc = biomed("data", "reports", "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3955 reports" in proc.stdout
    first = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert {"id", "findings", "impression", "indication", "comparison", "mesh_major",
            "mesh_automatic", "image_ids", "structured", "normal"} <= set(first)
