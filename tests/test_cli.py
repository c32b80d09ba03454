"""The `autoseg` command: help, exit codes, outputs, and the end-to-end runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_seg.cli import main
from autoprompt_seg.synthetic import synthetic_study
from conftest import tool

OUTPUTS = {"seg.dcm", "mask.nii.gz", "report.json", "preview.png"}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_study(tmp_path_factory.mktemp("synth") / "study", shape=(40, 160, 160),
                           spacing=(2.5, 1.5, 1.5), n_tumours=2, seed=3,
                           tumour_radius_mm=(10.0, 8.0))


def test_backends_lists_states_without_importing_torch():
    code = ("import sys, json\n"
            "from click.testing import CliRunner\n"
            "from autoprompt_seg.cli import main\n"
            "r = CliRunner().invoke(main, ['backends', '--json'])\n"
            "assert r.exit_code == 0, r.output\n"
            "rows = json.loads(r.output)\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'rows': rows}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    assert res["torch"] is False
    by_name = {(r["kind"], r["name"]): r for r in res["rows"]}
    assert by_name[("detector", "candidates")]["state"] == "ready"
    assert by_name[("segmenter", "classical")]["state"] == "ready"


@pytest.mark.parametrize("cmd", ["predict", "inspect", "backends", "demo", "listen", "queue", "detector", "weights", "bench"])
def test_every_command_has_help_with_an_example(cmd):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0
    assert "Example" in r.output
    assert "Exit codes" in r.output


def test_empty_folder_is_bad_input_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    r = invoke("predict", str(tmp_path / "empty"), "-o", str(out))
    assert r.exit_code == 65
    assert "empty" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_unwritable_output_exits_73_before_work(tmp_path, synth):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("predict", str(synth.study_dir), "-o", str(blocker / "out"))
    assert r.exit_code == 73, r.output
    assert str(blocker) in r.output


def test_prompts_need_the_oracle_detector(tmp_path, synth):
    p = tmp_path / "boxes.json"
    p.write_text("{}")
    r = invoke("predict", str(synth.study_dir), "--detector", "candidates", "--prompts", str(p),
               "-o", str(tmp_path / "o"))
    assert r.exit_code == 78
    assert "oracle" in r.output


def test_unknown_series_is_bad_input(tmp_path, synth):
    r = invoke("predict", str(synth.study_dir), "--series", "1.2.3.4", "-o", str(tmp_path / "o"))
    assert r.exit_code == 65
    assert "1.2.3.4" in r.output


def test_inspect_names_the_chosen_series(synth):
    r = invoke("inspect", str(synth.study_dir), "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["chosen"] == synth.series_uid
    assert "most slices" in data["reason"]


def test_predict_synthetic_end_to_end(tmp_path, synth):
    out = tmp_path / "out"
    r = invoke("--quiet", "predict", str(synth.study_dir), "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {p.name for p in out.iterdir()} == OUTPUTS
    report = json.loads((out / "report.json").read_text())
    assert report == data["report"]
    # both synthetic tumours are found
    import SimpleITK as sitk

    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz")))
    truth = synth.chest.labels
    for t in (1, 2):
        assert (lab[truth == t] > 0).mean() > 0.5, f"tumour {t} missed"
    assert len(report["lesions"]) >= 2


def test_manual_prompts_from_a_mask_are_semiautomatic(tmp_path, synth):
    import SimpleITK as sitk

    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.image import volume_to_sitk

    vol, _ = load_study(synth.study_dir)
    mask_path = tmp_path / "gt.nii.gz"
    sitk.WriteImage(volume_to_sitk(vol, synth.chest.labels), str(mask_path))
    out = tmp_path / "out"
    r = invoke("--quiet", "predict", str(synth.study_dir), "--prompts-from", str(mask_path),
               "-o", str(out))
    assert r.exit_code == 0, r.output
    import pydicom

    seg = pydicom.dcmread(out / "seg.dcm")
    assert len(seg.SegmentSequence) == 2
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}


def test_no_tumour_exits_0_without_seg(tmp_path):
    study = synthetic_study(tmp_path / "clean", shape=(24, 128, 128), n_tumours=0, seed=5)
    out = tmp_path / "out"
    r = invoke("predict", str(study.study_dir), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "No tumour found" in r.output
    assert not (out / "seg.dcm").exists()
    assert json.loads((out / "report.json").read_text())["lesions"] == []


def test_nifti_input_gives_nifti_only_and_says_why(tmp_path, synth):
    import SimpleITK as sitk

    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.image import volume_to_sitk

    vol, _ = load_study(synth.study_dir)
    img = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(vol), str(img))
    out = tmp_path / "out"
    r = invoke("predict", str(img), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "no DICOM-SEG" in r.output
    assert not (out / "seg.dcm").exists()
    assert (out / "mask.nii.gz").exists()


def test_demo_on_real_study_writes_a_valid_seg(tmp_path, pycerr_root, monkeypatch):
    """`autoseg demo` (what `make run` does) on the real pycerr pat_4 study."""
    monkeypatch.setenv("AUTOSEG_CACHE_DIR", str(pycerr_root.parent.parent))
    out = tmp_path / "out"
    r = invoke("--quiet", "demo", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == OUTPUTS
    res = subprocess.run([tool("dciodvfy"), str(out / "seg.dcm")], capture_output=True, text=True)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if "Error" in ln]
    assert errors == []
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["slices"] == 56
    assert len(report["lesions"]) >= 1


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "autoseg"
    res = subprocess.run([str(exe), "predict", str(tmp_path / "missing")], capture_output=True,
                         text=True)
    assert res.returncode == 65
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("autoseg: error:") and "missing" in lines[-1]
    assert sum("error" in ln for ln in lines) == 1 and "Traceback" not in res.stderr


def test_predict_set_changes_a_candidates_option(tmp_path, synth):
    """--set candidates.max_candidates=1: the option reaches the detector (report.json's
    detector details) and takes effect (one box instead of both tumours)."""
    out = tmp_path / "out"
    r = invoke("--quiet", "predict", str(synth.study_dir), "-o", str(out), "--json",
               "--set", "candidates.max_candidates=1", "--set",
               "candidates.min_thickness_mm=4.5")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    details = report["backends"]["detector"]["details"]
    assert details["max_candidates"] == 1 and details["min_thickness_mm"] == 4.5
    assert len(report["lesions"]) + len(report.get("not_segmented", [])) == 1


def test_predict_set_errors_name_the_key(tmp_path, synth):
    r = invoke("predict", str(synth.study_dir), "-o", str(tmp_path / "o"),
               "--set", "candidates.min_thickness_mm=thick")
    assert r.exit_code == 78
    assert "'candidates.min_thickness_mm' must be a number; got 'thick'" in r.output
    r = invoke("predict", str(synth.study_dir), "-o", str(tmp_path / "o"),
               "--set", "candidates.bogus=1")
    assert r.exit_code == 78 and "unknown key 'bogus'; known:" in r.output
    # a key that a flag also sets: the error names the flag
    r = invoke("predict", str(synth.study_dir), "-o", str(tmp_path / "o"),
               "--set", "nnunet.tta=maybe")
    assert r.exit_code == 78 and "--tta sets nnunet.tta" in r.output


def test_backends_options_lists_keys_defaults_and_units():
    r = invoke("backends", "--options", "candidates", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["key"]: row for row in json.loads(r.output)}
    assert rows["min_thickness_mm"]["default"] == 5.0
    assert rows["min_thickness_mm"]["help"] == "mm"
    assert rows["air_hu"]["help"] == "HU"
    r = invoke("backends", "--options", "candidates")
    assert r.exit_code == 0 and "candidates.min_thickness_mm" in r.output
    r = invoke("backends", "--options", "nosuch")
    assert r.exit_code == 78 and "unknown backend 'nosuch'" in r.output
