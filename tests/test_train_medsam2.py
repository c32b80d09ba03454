"""MedSAM2 training (``autoprompt_seg.train.medsam2``): options, clips, losses, the frozen
and trained parts, the segmenter's report of a checkpoint trained here, and a tiny run on
seeded synthetic volumes from the session's random checkpoint in MedSAM2's format, which
crashes, resumes, lowers its loss and beats its untrained start on a held-out volume
through the real ``medsam2`` segmenter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.datasets import Case
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.train.core import RunDir, TrainConfig, train_model
from autoprompt_seg.types import Volume

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")
T = pytest.importorskip("autoprompt_seg.train.medsam2")
MT = pytest.importorskip("autoprompt_seg.models.medsam2.training")
M = pytest.importorskip("autoprompt_seg.models.medsam2")


# --------------------------------------------------------------------------- synthetic data


def synthetic_volume(seed: int, nz: int = 5, size: int = 64) -> tuple[Volume, np.ndarray]:
    """A seeded phantom: lung-like background (-850 HU) with noise and one bright
    ellipsoid tumour (30 HU, in-plane radii 12-18 % of the image, at a random place) on the
    middle ``nz - 2`` slices, 5 mm apart. Preprocessing upsamples it to 512 px like any
    slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(size), np.arange(size), indexing="ij",
                          sparse=True)
    c = (size - 1) / 2
    hu = np.full((nz, size, size), -850.0, np.float32)
    cy, cx = c + rng.uniform(-0.2, 0.2, 2) * size
    ry, rx = rng.uniform(0.12, 0.18, 2) * size
    cz = (nz - 1) / 2
    mask = ((z - cz) / (cz - 0.25)) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    hu[mask] = 30.0
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    vol = Volume(array=hu, spacing=(5.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, mask


def synthetic_case(seed: int, **kw: Any) -> Case:
    vol, mask = synthetic_volume(seed, **kw)
    return Case(f"syn{seed}", f"P{seed}", lambda: vol, lambda _v: mask,
                source=f"synthetic:{seed}")


# --------------------------------------------------------------------------- fast units


def test_options_defaults_and_validation() -> None:
    o = MT.MedSAM2TrainOptions.from_options({})
    assert o.clip_len == 8 and o.box == "slice" and o.teacher_forcing == 0.0
    assert dict(o.loss_weights) == {"focal": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}
    assert o.feature_dtype == "float16" and o.allow_random_base is False
    o = MT.MedSAM2TrainOptions.from_options({"clip_len": 3, "box": "lesion",
                                            "loss_weights": {"focal": 1},
                                            "teacher_forcing": 0.5})
    assert o.clip_len == 3 and o.box == "lesion" and o.loss_weights["focal"] == 1.0
    assert o.loss_weights["dice"] == 1.0 and o.teacher_forcing == 0.5
    assert MT.MedSAM2TrainOptions.from_options({"clip_len": np.int64(4)}).clip_len == 4
    # (key, bad value, what the message says is expected, the value as the message shows it)
    for key, bad, expected, shown in (
            ("clip_len", 0, "an integer in [1, 64]", "0"),
            ("clip_len", 2.5, "an integer", "2.5"),
            ("clip_len", True, "an integer", "True"),
            ("box", "cube", "one of slice, lesion", "'cube'"),
            ("jitter_shift", -0.1, "a number in [0.0, 0.99]", "-0.1"),
            ("jitter_scale", 1.5, "a number in [0.0, 0.99]", "1.5"),
            ("teacher_forcing", 2, "a number in [0.0, 1.0]", "2.0"),
            ("grad_clip", -1, "a number in [0.0, 1000000.0]", "-1.0"),
            ("feature_dtype", "int8", "one of float16, bfloat16, float32", "'int8'"),
            ("feature_cache_mb", 0, "a number in (0.0, 10000000.0]", "0.0"),
            ("allow_random_base", "yes", "true or false", "'yes'"),
            ("loss_weights", {"bce": 1}, "a table mapping some of focal, dice, iou, class to numbers >= 0",
             "{'bce': 1.0}"),
            ("loss_weights", {"focal": -1}, "a table mapping some of focal, dice, iou, class to numbers >= 0",
             "{'focal': -1.0}"),
            ("loss_weights", {"focal": "x"}, "a table (a string -> a number)",
             "{'focal': 'x'}"),
            ("loss_weights", {"focal": 0, "dice": 0, "iou": 0, "class": 0},
             "a table with a positive weight",
             "{'focal': 0.0, 'dice': 0.0, 'iou': 0.0, 'class': 0.0}")):
        with pytest.raises(ConfigError) as ei:
            MT.MedSAM2TrainOptions.from_options({key: bad})
        msg = str(ei.value)
        assert msg == f"Option 'train.medsam2.{key}' must be {expected}; got {shown}", msg
        assert ei.value.exit_code == 78
    with pytest.raises(ConfigError) as ei:  # an unknown key: named, with its value
        MT.MedSAM2TrainOptions.from_options({"clip_length": 8})
    msg = str(ei.value)
    assert "Option 'train.medsam2': unknown key(s) 'clip_length'; known: " in msg, msg
    assert "clip_len," in msg and msg.endswith("; got {'clip_length': 8}"), msg
    assert ei.value.exit_code == 78


def test_clips_start_on_every_tumour_slice_in_both_directions() -> None:
    assert MT.clip_frames(3, 1, 10, 4) == [3, 4, 5, 6]
    assert MT.clip_frames(3, -1, 10, 4) == [3, 2, 1, 0]
    assert MT.clip_frames(8, 1, 10, 4) == [8, 9]  # cut at the end of the volume
    assert MT.clip_frames(1, -1, 10, 4) == [1, 0]
    with pytest.raises(ValueError):
        MT.clip_frames(10, 1, 10, 4)
    assert MT.needed_slices([4, 5], 10, 3) == [2, 3, 4, 5, 6, 7]
    assert MT.needed_slices([0], 3, 8) == [0, 1, 2]
    les = MT.Lesion(1, {2: (0, 2, 0, 2), 3: (0, 2, 0, 2)}, (0, 2, 0, 2), (2, 3))
    les2 = MT.Lesion(2, {5: (4, 6, 4, 6)}, (4, 6, 4, 6), (5,))
    idx = MT.CaseIndex("a", "a-x", (8, 16, 16), (les, les2), tuple(range(8)), 3)
    assert MT.CaseIndex.from_dict(json.loads(json.dumps(idx.to_dict()))) == idx
    anchors = MT.anchors_of([idx])
    assert {(a.lesion, a.z, a.step) for a in anchors} == {
        (1, 2, 1), (1, 2, -1), (1, 3, 1), (1, 3, -1), (2, 5, 1), (2, 5, -1)}


def test_lesions_and_labels_at_512() -> None:
    m = np.zeros((3, 32, 32), bool)
    m[0:2, 2:6, 2:6] = True
    m[1:3, 20:30, 10:16] = True
    lab, n = MT.lesions_of(m)
    assert n == 2 and set(np.unique(lab)) == {0, 1, 2}
    l512 = MT.labels_to_512(lab[1], [1, 2], 512)
    assert l512.shape == (512, 512) and l512.dtype == np.uint8
    assert set(np.unique(l512)) == {0, 1, 2}
    # lesion 2 spans rows 20..29 and columns 10..15 of 32: 16x larger at 512 px
    ys, xs = np.nonzero(l512 == 2)
    assert abs(ys.min() - 320) <= 8 and abs(ys.max() + 1 - 480) <= 8
    assert abs(xs.min() - 160) <= 8 and abs(xs.max() + 1 - 256) <= 8
    assert (MT.labels_to_512(lab[2], [2], 512) == 2).sum() == pytest.approx(60 * 256, rel=0.1)


def test_frame_losses_follow_sam2() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1  # clip 0: lesion present; clip 1: absent
    good = target * 40 - 20
    masks = torch.cat([good, -good, torch.zeros_like(good)], dim=1)  # (2, 3, 8, 8)
    ious = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    obj = torch.tensor([[10.0], [-10.0]])
    w = MT.DEFAULT_LOSS_WEIGHTS
    lo = MT.frame_losses(masks, ious, obj, target, w)
    assert set(lo) == {"focal", "dice", "iou", "class"}
    assert lo["focal"][0] < 1e-6 and lo["dice"][0] < 0.05  # the best output is taken
    assert lo["iou"][0] == pytest.approx(0.0, abs=1e-6)  # IoU head exact for all three
    assert lo["class"][0] < 1e-3 and lo["class"][1] < 1e-3
    for k in ("focal", "dice", "iou"):  # absent lesion: only the object score counts
        assert lo[k][1] == 0
    worse = MT.frame_losses(masks[:, 1:2], ious[:, :1], -obj, target, w)
    assert worse["focal"][0] > 0.1 and worse["dice"][0] > 0.9 and worse["class"][0] > 5


def test_missing_base_checkpoint_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(model="medsam2", epochs=1, device="cpu")
    cases = [synthetic_case(1)]
    run = RunDir(tmp_path / "run", cfg, cases)
    with pytest.raises(ConfigError, match="MedSAM2_latest") as ei:
        T.train(cfg, cases, run, settings=Settings(device="cpu"), init_checkpoint=None,
                progress=None)
    assert "init_checkpoint" in str(ei.value) and ei.value.exit_code == 78
    with pytest.raises(ConfigError, match="clip_length"):
        T.train(TrainConfig(model="medsam2", options={"clip_length": 4}), cases, run,
                settings=Settings(device="cpu"), init_checkpoint=None, progress=None)


def test_a_run_folder_is_not_resumed_from_other_weights_or_window(tmp_path: Path) -> None:
    cfg = TrainConfig(model="medsam2", epochs=1, device="cpu")
    run = RunDir(tmp_path / "run", cfg, [synthetic_case(1)])
    ident = {"base_sha256": "a" * 64, "window_level_width": [-600.0, 1500.0]}
    T._check_identity(run, ident)
    T._check_identity(run, dict(ident))  # the same run resumes
    for other in ({**ident, "base_sha256": "b" * 64}, {**ident, "window_level_width": [40, 400]}):
        with pytest.raises(ConfigError, match="another folder"):
            T._check_identity(run, other)


def test_only_decoder_and_memory_are_trained(medsam2_checkpoint: Path) -> None:
    model = M.load_model(medsam2_checkpoint, "cpu")
    trained, frozen = MT.configure_trainable(model)
    assert model.training and model.memory_attention.training
    assert not model.image_encoder.training and not model.sam_prompt_encoder.training
    tops = {n.split(".", 1)[0] for n in trained}
    assert tops == {"sam_mask_decoder", "memory_attention", "memory_encoder", "obj_ptr_proj",
                    "obj_ptr_tpos_proj", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
                    "no_obj_ptr", "no_obj_embed_spatial"}
    assert not any(n.startswith(("image_encoder.", "sam_prompt_encoder.", "mask_downsample",
                                 "sam_mask_decoder.conv_s")) for n in trained)
    assert all(n in frozen for n in ("sam_mask_decoder.conv_s0.weight",
                                     "image_encoder.trunk.patch_embed.proj.weight"))
    groups = MT.param_groups(model, 0.1)
    assert groups[0]["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in groups[1]["params"])
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad) > 10_000_000


def _write_record(ck: Path, **rec: Any) -> None:
    from autoprompt_seg.weights import sha256_file

    body = {"model": "medsam2", "sha256": sha256_file(ck), "epochs": 3, "n_cases": 2,
            "data_hash": "abc123def456", **rec}
    ck.with_name(ck.name + ".train.json").write_text(json.dumps(body))


def test_training_record_makes_the_segmenter_report_trained_here(
        medsam2_checkpoint: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pt"
    shutil.copyfile(medsam2_checkpoint, ck)
    s = Settings(device="cpu", weights_dir=tmp_path, options={"medsam2_checkpoint": str(ck)})
    o = M.MedSAM2Options.from_settings(s)
    assert not M.resolve_checkpoint(s, o).trained  # no record: an untrained test file
    _write_record(ck)
    c = M.resolve_checkpoint(s, o)
    assert c.trained and c.provenance == ("trained here: medsam2, 2 case(s), 3 epoch(s), "
                                          "data abc123def456")
    _write_record(ck, model="medsam")  # a record of another model does not count
    assert not M.resolve_checkpoint(s, o).trained
    _write_record(ck, sha256="0" * 64)  # nor one whose sha256 is not the file's
    assert not M.resolve_checkpoint(s, o).trained
    _write_record(ck, base_checkpoint={"name": "random.pt", "trained": False})
    assert not M.resolve_checkpoint(s, o).trained  # fine-tuned from random test weights


# --------------------------------------------------------------------------- a tiny run

TRAIN_SEEDS = (100, 101)
HELD_OUT_SEED = 300
STEPS_PER_EPOCH = 3
EPOCHS = 2


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny_run(medsam2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """Two synthetic training volumes, clips of 2 slices, 2 clips per step, 3 steps per
    epoch, 2 epochs, lr 2e-3, from the session's random checkpoint. The first attempt
    crashes on the first step of epoch 2 (from the progress callback); the second resumes."""
    out = tmp_path_factory.mktemp("medsam2-train") / "run"
    cases = [synthetic_case(s) for s in TRAIN_SEEDS]
    cfg = TrainConfig(model="medsam2", epochs=EPOCHS, batch_size=2, lr=2e-3,
                      steps_per_epoch=STEPS_PER_EPOCH, seed=0, device="cpu",
                      options={"clip_len": 2})
    settings = Settings(device="cpu", threads=2, weights_dir=out.parent)

    def crash(done: int, total: int) -> None:
        if done == STEPS_PER_EPOCH + 1:
            raise SimulatedCrash("simulated crash in epoch 2")

    with pytest.raises(SimulatedCrash):
        train_model(cfg, cases, out, settings=settings,
                    init_checkpoint=str(medsam2_checkpoint), progress=crash)
    crashed_rows = [json.loads(r) for r in (out / "loss.jsonl").read_text().splitlines()]
    seen: list[tuple[int, int]] = []
    result = train_model(cfg, cases, out, settings=settings,
                         init_checkpoint=str(medsam2_checkpoint),
                         progress=lambda d, n: seen.append((d, n)))
    rows = [json.loads(r) for r in (out / "loss.jsonl").read_text().splitlines()]
    return {"result": result, "crashed_rows": crashed_rows, "rows": rows, "seen": seen,
            "cfg": cfg, "out": out}


def test_tiny_run_resumes_after_a_crash_where_it_stopped(tiny_run: dict[str, Any]) -> None:
    crashed, rows, seen = tiny_run["crashed_rows"], tiny_run["rows"], tiny_run["seen"]
    total = EPOCHS * STEPS_PER_EPOCH
    # the crashed attempt logged epoch 1 and the first step of epoch 2
    assert [r["step"] for r in crashed] == list(range(1, STEPS_PER_EPOCH + 2))
    # the resumed one started after epoch 1, redid that step, and finished
    assert seen == [(d, total) for d in range(STEPS_PER_EPOCH + 1, total + 1)]
    assert [r["step"] for r in rows] == list(range(1, total + 1))  # no duplicate rows
    assert rows[:STEPS_PER_EPOCH] == crashed[:STEPS_PER_EPOCH]
    redo, first = rows[STEPS_PER_EPOCH], crashed[STEPS_PER_EPOCH]
    assert redo["loss"] == pytest.approx(first["loss"], rel=1e-4)  # same state, same clips
    rec = tiny_run["result"].record
    assert rec["timing"]["encoded_slices"] == 0  # the features cached by the first attempt
    assert rec["timing"]["steps"] == STEPS_PER_EPOCH
    assert all(r["clips"] == 2 for r in rows)


def test_tiny_run_lowers_its_loss(tiny_run: dict[str, Any]) -> None:
    rows = tiny_run["rows"]
    first = [r for r in rows if r["epoch"] == 1]
    last = [r for r in rows if r["epoch"] == EPOCHS]
    assert np.median([r["loss"] for r in last]) < 0.7 * np.median([r["loss"] for r in first])
    assert np.mean([r["dice"] for r in last]) < 0.5 * np.mean([r["dice"] for r in first])
    assert tiny_run["result"].final_loss == pytest.approx(np.mean([r["loss"] for r in last]))


def test_trained_checkpoint_is_medsam2_format_and_its_random_base_is_disclosed(
        tiny_run: dict[str, Any], medsam2_checkpoint: Path) -> None:
    from autoprompt_seg.weights import sha256_file, training_record

    res = tiny_run["result"]
    assert res.checkpoint.name == "medsam2_trained.pt"
    assert sha256_file(res.checkpoint) == res.sha256
    obj = torch.load(res.checkpoint, map_location="cpu", weights_only=True)
    assert set(obj) == {"model"}
    base = torch.load(medsam2_checkpoint, map_location="cpu", weights_only=True)["model"]
    assert set(obj["model"]) == set(base)  # every key, loaded strictly below
    changed = {k.split(".", 1)[0] for k in base if not torch.equal(base[k], obj["model"][k])}
    assert changed and changed <= set(MT.TRAINABLE_MODULES) | set(MT.TRAINABLE_PARAMS)
    assert "image_encoder" not in changed and "sam_prompt_encoder" not in changed
    assert torch.equal(base["sam_mask_decoder.conv_s0.weight"],
                       obj["model"]["sam_mask_decoder.conv_s0.weight"])
    assert training_record(res.checkpoint) is None  # fine-tuned from a random base
    rec = training_record(res.checkpoint, require_trained_base=False)
    assert rec is not None and rec["model"] == "medsam2" and rec["epochs"] == EPOCHS
    assert rec["n_cases"] == 2 and rec["base_checkpoint"]["sha256"] == sha256_file(
        medsam2_checkpoint)
    assert rec["window_level_width"] == list(M.DEFAULT_WINDOW)
    seg = M.create(Settings(device="cpu", threads=2, weights_dir=tiny_run["out"],
                            options={"medsam2_checkpoint": str(res.checkpoint)}))
    info = seg.info()
    # fine-tuned from random test weights: never reported as a trained model (the
    # "trained here" provenance of a record with a trained base is tested above)
    assert info.trained is False and info.details["provenance"] == "untrained test checkpoint"
    assert "note" in info.details
    assert info.checkpoint_sha256 == res.sha256


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_trained_checkpoint_beats_its_untrained_start_on_a_held_out_volume(
        tiny_run: dict[str, Any], medsam2_checkpoint: Path) -> None:
    """Through the real segmenter: the held-out volume's GT key-slice box, propagation both
    ways, 3-D Dice against its GT."""
    from autoprompt_seg.detect.oracle import boxes_from_mask

    vol, gt = synthetic_volume(HELD_OUT_SEED)
    boxes = boxes_from_mask(gt)
    assert len(boxes) == 1
    dice = {}
    for name, ck in (("untrained", medsam2_checkpoint),
                     ("trained", tiny_run["result"].checkpoint)):
        seg = M.create(Settings(device="cpu", threads=2, weights_dir=tiny_run["out"],
                                options={"medsam2_checkpoint": str(ck)}))
        dice[name] = _dice(seg.segment(vol, boxes)[0].full(), gt)
    assert dice["trained"] > dice["untrained"] + 0.3, dice
    assert dice["trained"] > 0.5, dice
