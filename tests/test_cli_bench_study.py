"""``autoseg bench run CONFIG.toml`` end to end on a small synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_seg.cli import main
from test_bench_runner import make_pairs


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def _write(tmp: Path, text: str) -> Path:
    f = tmp / "study.toml"
    f.write_text(text)
    return f


def test_study_runs_every_method_and_writes_the_report(pairs_root: Path, tmp_path: Path):
    cfg = _write(tmp_path, f"""
measure_cost = false
[dataset]
name = "pairs"
path = "{pairs_root}"

[[method]]
segmenter = "classical"
detector = "candidates"

[[method]]
segmenter = "classical"
detector = "oracle"
jitter_shift = 0.1
""")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    modes = sorted(g["mode"] for g in summary["groups"])
    assert modes == ["auto", "manual:key-slice"]
    assert all(g["paradigm"] == "zero-shot" for g in summary["groups"])
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 10  # 5 cases x 2 methods, bad cases reported as skipped
    assert sum(r["status"] == "ok" for r in rows) == 4
    assert (out / "report.html").is_file() and (out / "summary.md").is_file()
    # a rerun resumes: nothing new is evaluated
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len((out / "cases.jsonl").read_text().splitlines()) == 10


def test_config_and_method_flags_do_not_mix(tmp_path: Path):
    cfg = _write(tmp_path, '[dataset]\nname = "pycerr"\n[[method]]\nsegmenter = "classical"\n')
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--segmenter", "medsam2",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 78 and "--segmenter" in r.output


def test_bad_config_exits_78_naming_the_key(tmp_path: Path):
    cfg = _write(tmp_path, '[dataset]\nname = "pycerr"\n[[method]]\nsegmentr = "x"\n')
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 78 and "segmentr" in r.output
    assert not (tmp_path / "o").exists()


def test_out_is_required_without_config(tmp_path: Path):
    r = CliRunner().invoke(main, ["bench", "run", "--dataset", "pycerr"])
    assert r.exit_code == 78 and "--out" in r.output


#: every flag of ``bench run`` before its options were grouped (method / run options)
RUN_FLAGS = ("--dataset", "--dataset-path", "--roi", "--detector", "--segmenter",
             "--checkpoint", "--prompt-protocol", "--every-k", "--jitter-shift",
             "--jitter-scale", "--seed", "--match-dice", "--min-score", "--max-lesions",
             "--case", "--splits", "--split", "--no-masks", "--no-cost", "--cost-repeats",
             "--no-overlays", "--executor", "--scheduler", "--workers", "--device", "--threads",
             "--weights-dir", "--out")


def test_bench_run_keeps_every_flag_and_refuses_method_flags_with_a_config(tmp_path: Path):
    from autoprompt_seg.cli.bench import _METHOD_OPTIONS, _RUN_OPTIONS, run_cmd

    flags = {o for p in run_cmd.params for o in p.opts}
    assert set(RUN_FLAGS) <= flags
    assert len(_METHOD_OPTIONS) == 21 and len(_RUN_OPTIONS) == 7  # 20 + --set
    assert "--set" in flags and "assignments" in _METHOD_OPTIONS
    cfg = _write(tmp_path, '[dataset]\nname = "pycerr"\n[[method]]\nsegmenter = "classical"\n')
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--detector", "oracle",
                                  "--every-k", "3", "--case", "x", "--out", str(tmp_path / "o")])
    assert r.exit_code == 78
    assert "methods and dataset come from the file; remove --detector, --every-k, --case" \
        in r.stderr
    r = CliRunner().invoke(main, ["bench", "run", str(cfg), "--set",
                                  "candidates.min_thickness_mm=4", "--out", str(tmp_path / "o")])
    assert r.exit_code == 78 and "remove --set" in r.stderr
