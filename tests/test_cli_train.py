"""``autoseg train`` end to end on a tiny synthetic ``pairs`` dataset: exit code, output,
a checkpoint that loads as a segmenter, resume, and the documented refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_seg.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from test_bench_runner import make_pairs  # noqa: E402

ARCH = json.dumps({"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1})


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def _train(root: Path, out: Path, *extra: str):
    args = ["--quiet", "train", "unet", "--dataset", "pairs", "--dataset-path", str(root),
            "--case", "P01__a", "--case", "P02__a", "--epochs", "1", "--batch-size", "2",
            "--steps-per-epoch", "2", "--image-size", "32", "--option", f"arch={ARCH}",
            "--device", "cpu", "--threads", "1", "--out", str(out), *extra]
    return CliRunner().invoke(main, args)


def _summary(stdout: str) -> dict:
    start = stdout.index("{\n")  # the JSON summary is the last thing on stdout
    return json.loads(stdout[start:])


def test_train_unet_end_to_end_and_the_checkpoint_loads(pairs_root: Path, tmp_path: Path):
    from autoprompt_seg.config import Settings
    from autoprompt_seg.models.cnn2d.segmenter import create_unet as create

    out = tmp_path / "run"
    r = _train(pairs_root, out, "--weights-dir", str(tmp_path / "w"))
    assert r.exit_code == 0, r.output
    assert "training unet on 2 case(s): P01__a, P02__a" in r.stderr
    s = _summary(r.stdout)
    ck = Path(s["checkpoint"])
    assert ck.is_file() and ck.parent == out and s["epochs"] == 1
    import hashlib

    assert s["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert s["final_loss"] is not None and s["data_hash"] and s["config_hash"]
    # the checkpoint loads strictly as the unet segmenter and says where it comes from
    seg = create(Settings(device="cpu", options={"unet": {"checkpoint": str(ck)}}))
    info = seg.info()
    assert info.name == "unet" and info.checkpoint_sha256 == s["sha256"]
    assert info.details["architecture"]["channels"] == [8, 16, 32]
    assert "trained here" in json.dumps(info.details)
    # rerun with the same arguments: the finished run is returned at once, unchanged
    again = _train(pairs_root, out)
    assert again.exit_code == 0, again.output
    assert _summary(again.stdout)["sha256"] == s["sha256"]


def test_train_refusals_exit_78(pairs_root: Path, tmp_path: Path):
    r = CliRunner().invoke(main, ["train", "unet", "--dataset", "pairs", "--dataset-path",
                                  str(pairs_root), "--case", "NOPE", "--out",
                                  str(tmp_path / "r")])
    assert r.exit_code == 78 and "autoseg: error: --case NOPE: not among" in r.stderr
    r = CliRunner().invoke(main, ["train", "unet", "--dataset", "pairs", "--dataset-path",
                                  str(pairs_root), "--option", "arch", "--out",
                                  str(tmp_path / "r")])
    assert r.exit_code == 78 and "--option must be KEY=VALUE" in r.stderr
    assert not (tmp_path / "r").exists()
