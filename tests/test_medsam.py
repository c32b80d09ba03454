"""The medsam segmenter (2-D MedSAM, SAM ViT-B) and its decoder-only trainer.

Random weights (a seeded SAM ViT-B state dict in MedSAM's exact format, made once per
session) make no accuracy claim: masks are compared with ``segment_anything.SamPredictor``
and with MedSAM's published inference, never with ground truth; the training test only
shows that the decoder learns on synthetic blobs.

Cost: ViT-B encodes a 1024x1024 input in tens of seconds on this 2-core CPU, so the file
runs the real encoder on four slices in all. Where two pipelines must see the same image
embedding, :class:`medsam_helpers.EncoderMemo` hands the first run's output to the second
only when the encoder's weights and its input tensor are bitwise identical (its ``hits``
prove that the two pipelines fed the encoder the same tensor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.errors import ConfigError, UnavailableError
from autoprompt_seg.types import Box3D, LesionMask, Volume

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
M = pytest.importorskip("autoprompt_seg.models.medsam")
MB = pytest.importorskip("autoprompt_seg.models.medsam.backend")

from medsam_helpers import (  # noqa: E402
    EncoderMemo,
    blob_slice,
    dice,
    make_checkpoint,
    mask_box,
    medsam_reference,
)


@pytest.fixture(scope="session")
def medsam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random SAM ViT-B state dict saved as ``medsam_vit_b.pth`` (once per session).
    Random weights: never a trained model."""
    return make_checkpoint(tmp_path_factory.mktemp("medsam") / "random_medsam_vit_b.pth", 0)


def _settings(tmp_path: Path, **opts: Any) -> Settings:
    return Settings(device="cpu", threads=2, weights_dir=tmp_path, options={"medsam": opts})


def _vol(hu: np.ndarray) -> Volume:
    hu = hu if hu.ndim == 3 else hu[None]
    return Volume(array=np.ascontiguousarray(hu, dtype=np.float32), spacing=(3.0, 1.0, 1.0),
                  origin=(0.0, 0.0, 0.0), direction=np.eye(3), source_format="synthetic")


# --------------------------------------------------------------------------- fast units


def test_options_are_validated(tmp_path: Path) -> None:
    o = M.MedSAMOptions.from_settings(_settings(tmp_path, window="40,400", preprocess="sam",
                                                encoder_batch=2, bf16=False))
    assert o.window == (40.0, 400.0) and o.preprocess == "sam" and o.encoder_batch == 2
    assert M.MedSAMOptions.from_settings(Settings()).checkpoint == "medsam_vit_b"
    for bad, word in (({"windw": 1}, "windw"), ({"window": (0, -5)}, "medsam.window"),
                      ({"preprocess": "imagenet"}, "medsam.preprocess"),
                      ({"encoder_batch": -1}, "medsam.encoder_batch"),
                      ({"bf16": "yes"}, "medsam.bf16"), ({"checkpoint": ""}, "checkpoint")):
        with pytest.raises(ConfigError, match=word):
            M.MedSAMOptions.from_settings(_settings(tmp_path, **bad))
    with pytest.raises(ConfigError, match="mapping"):
        M.MedSAMOptions.from_settings(Settings(options={"medsam": "x"}))


def test_pure_helpers_boxes_overlap_and_assembly() -> None:
    b = Box3D(2, 5, 10, 20, 30, 44, 3, score=0.7, source="det")
    per = M.slice_boxes_of(b)
    assert [(s.z0, s.z1, s.key_slice) for s in per] == [(2, 3, 2), (3, 4, 3), (4, 5, 4)]
    assert all((s.y0, s.y1, s.x0, s.x1, s.score, s.source) == (10, 20, 30, 44, 0.7, "det")
               for s in per)
    u = M.union_box([Box3D(4, 5, 0, 4, 0, 4, 4), Box3D(6, 7, 2, 10, 1, 9, 6)])
    assert (u.z0, u.z1, u.y0, u.y1, u.x0, u.x1, u.key_slice) == (4, 7, 0, 10, 0, 9, 6)
    np.testing.assert_array_equal(M.box_pixels(b), [30, 10, 43, 19])
    # SamPredictor's frame keeps the aspect ratio; MedSAM's stretches to 1024 x 1024
    np.testing.assert_allclose(M.boxes_to_model(np.array([[0, 0, 99, 49]]), (50, 100), "sam"),
                               [[0, 0, 99 * 10.24, 49 * 10.24]])
    np.testing.assert_allclose(
        M.boxes_to_model(np.array([[0, 0, 99, 49]]), (50, 100), "medsam"),
        [[0, 0, 99 * 10.24, 49 * 20.48]])
    # two lesions claim the middle column; lesion 0 has two boxes on the slice (joined)
    scores = np.full((3, 4, 6), -1.0, np.float32)
    scores[0, :, 0:2] = 1.0          # lesion 0, box a
    scores[1, :, 2:4] = 0.5          # lesion 0, box b
    scores[2, :, 3:6] = 0.8          # lesion 1: beats box b on column 3
    accs = [MB._LesionAcc(), MB._LesionAcc()]
    owners = [(0, b), (0, b), (1, b)]
    MB._resolve_slice(7, owners, scores, 0.0, accs)
    full = [MB._assemble(a, b, (9, 4, 6)).full()[7] for a in accs]
    assert full[0][:, :3].all() and not full[0][:, 3:].any()
    assert full[1][:, 3:].all() and not full[1][:, :3].any()
    empty = MB._assemble(MB._LesionAcc(), b, (9, 4, 6))
    assert empty.is_empty and empty.volume_shape == (9, 4, 6)


def test_checkpoint_errors_name_the_file(medsam_checkpoint: Path, tmp_path: Path) -> None:
    trunc = tmp_path / "truncated.pth"
    with open(medsam_checkpoint, "rb") as f:
        trunc.write_bytes(f.read(4 << 20))
    with pytest.raises(UnavailableError, match="truncated.pth.*truncated or corrupt"):
        M.create(_settings(tmp_path, checkpoint=str(trunc)))
    wrong = tmp_path / "vit_l_like.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
                "extra.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match=r"vit_l_like.pth.*SAM ViT-B.*missing key.*"
                                          r"unexpected key.*shape mismatch"):
        M.create(_settings(tmp_path, checkpoint=str(wrong)))
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ConfigError, match="list.pth.*not in MedSAM's format"):
        M.read_checkpoint(notdict)
    wrapped = tmp_path / "medsam_model_latest.pth"  # MedSAM's own training checkpoint
    torch.save({"model": {"a": torch.ones(2)}, "epoch": 3}, wrapped)
    assert list(M.read_checkpoint(wrapped)) == ["a"]
    with pytest.raises(UnavailableError, match="autoseg weights fetch medsam_vit_b"):
        M.create(_settings(tmp_path))  # the manifest name, not installed here
    with pytest.raises(UnavailableError, match="no/such.pth"):
        M.create(_settings(tmp_path, checkpoint="no/such.pth"))


def test_provenance_release_sha_and_training_record(medsam_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    from dataclasses import replace

    from autoprompt_seg.weights import load_manifest, sha256_file

    sha = sha256_file(medsam_checkpoint)
    s = _settings(tmp_path, checkpoint=str(medsam_checkpoint))
    c = M.resolve_checkpoint(s, M.MedSAMOptions.from_settings(s))
    assert not c.trained and c.provenance == "untrained test checkpoint" and c.sha256 == sha
    m = load_manifest()
    m["medsam_vit_b"] = replace(m["medsam_vit_b"], sha256=sha)
    with mock.patch("autoprompt_seg.weights.load_manifest", return_value=m):
        c = M.resolve_checkpoint(s, M.MedSAMOptions.from_settings(s))
    assert c.trained and c.name == "medsam_vit_b" and "pinned release" in c.provenance
    assert c.state == "pinned release"
    # a training record beside the file counts only when its sha256 matches the file
    ck = tmp_path / "ft.pth"
    ck.symlink_to(medsam_checkpoint)
    side = tmp_path / "ft.pth.train.json"
    rec = {"model": "medsam", "sha256": sha, "n_cases": 3, "epochs": 5, "data_hash": "abc123",
           "preprocess": "sam", "window": [40, 400]}
    side.write_text(json.dumps(rec))
    s2 = _settings(tmp_path, checkpoint=str(ck))
    c = M.resolve_checkpoint(s2, M.MedSAMOptions.from_settings(s2))
    assert c.trained and c.provenance == "trained here: medsam, 3 case(s), 5 epoch(s), data abc123"
    side.write_text(json.dumps({**rec, "sha256": "0" * 64}))
    c = M.resolve_checkpoint(s2, M.MedSAMOptions.from_settings(s2))
    assert not c.trained and c.provenance == "untrained test checkpoint"


def test_weights_folder_route_reports_untrained(medsam_checkpoint: Path, tmp_path: Path) -> None:
    from autoprompt_seg.backends import SliceSegmenter, torch_modules
    from autoprompt_seg.errors import UnavailableError
    from autoprompt_seg.weights import add_weights, sha256_file

    # the manifest pins the real medsam_vit_b: random weights cannot be installed as it
    with pytest.raises(UnavailableError, match="manifest pins"):
        add_weights(medsam_checkpoint, "medsam_vit_b", tmp_path)
    # the weights-folder route with an unknown file (as when no hash is pinned)
    (tmp_path / "medsam_vit_b.pth").symlink_to(medsam_checkpoint)
    seg = M.create(Settings(device="cpu", threads=2, weights_dir=tmp_path))
    assert isinstance(seg, SliceSegmenter)
    info = seg.info()
    assert (info.name, info.kind, info.checkpoint) == ("medsam", "segmenter", "medsam_vit_b")
    assert info.checkpoint_sha256 == sha256_file(medsam_checkpoint)
    assert info.trained is False
    assert info.details["provenance"] == "untrained test checkpoint"
    assert "untrained test checkpoint" in info.details["note"]
    assert info.details["preprocess"] == "medsam"
    assert info.details["window_level_width"] == [-600.0, 1500.0]
    assert info.details["encoder_precision"] == "float32"
    sam = torch_modules(seg)["sam"]
    from segment_anything.modeling import Sam

    assert isinstance(sam, Sam)
    assert sum(p.numel() for p in sam.parameters()) == 93_735_472  # SAM ViT-B


# --------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def pat4_slice(pat4_dir: Path) -> tuple[Volume, int, list[Box3D]]:
    """A real pycerr CT (non-square 172x178 slices), the tumour's largest slice, and two
    overlapping boxes on it: the tumour's and one shifted by half its size."""
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask

    vol, _ = load_study(pat4_dir)
    rs = find_rtstruct(pat4_dir)
    assert rs is not None
    gt = load_roi_mask(rs, vol)
    z = int(np.argmax(gt.sum(axis=(1, 2))))
    y0, y1, x0, x1 = mask_box(gt[z])
    dy, dx = (y1 - y0) // 2, (x1 - x0) // 2
    h, w = vol.shape[1:]
    boxes = [Box3D(z, z + 1, y0, y1, x0, x1, z),
             Box3D(z, z + 1, y0 + dy, min(h, y1 + dy), x0 + dx, min(w, x1 + dx), z)]
    return vol, z, boxes


def _expected_per_lesion(scores: np.ndarray, thr: float) -> list[np.ndarray]:
    pos = scores > thr
    best = np.argmax(np.where(pos, scores, -np.inf), axis=0)
    return [pos[i] & (best == i) for i in range(len(scores))]


def test_sam_preprocess_equals_sam_predictor(medsam_checkpoint: Path, tmp_path: Path,
                                             pat4_slice: tuple[Volume, int, list[Box3D]]
                                             ) -> None:
    """``preprocess="sam"``: the same checkpoint and boxes give exactly SamPredictor's masks
    (logits within 1e-5) on a real non-square slice; both lesions share one encoder call,
    and the pixels both claim go to the higher logit."""
    from segment_anything import SamPredictor, sam_model_registry

    vol, z, boxes = pat4_slice
    seg = M.create(_settings(tmp_path, checkpoint=str(medsam_checkpoint), preprocess="sam"))
    memo = EncoderMemo()
    memo.install(seg.model)
    calls: list[tuple[int, int]] = []
    masks = seg.segment_slices(vol, [[boxes[0]], [boxes[1]]],
                               progress=lambda d, t: calls.append((d, t)))
    assert seg.last_stats.encoder_calls == 1 and seg.last_stats.boxes == 2
    assert calls == [(1, 1)]
    xy = np.stack([M.box_pixels(b) for b in boxes])
    ours = seg.slice_scores(vol.array[z], xy)  # same input: served by the memo

    ref_sam = sam_model_registry["vit_b"](checkpoint=str(medsam_checkpoint)).eval()
    memo.install(ref_sam)  # asserts bitwise-equal encoder weights
    pred = SamPredictor(ref_sam)
    u8 = M.window_uint8(vol.array[z], M.DEFAULT_WINDOW)
    pred.set_image(np.repeat(u8[:, :, None], 3, axis=-1))
    assert memo.runs == 1 and memo.hits == 2  # SamPredictor fed the encoder our tensor
    ref_logits, ref_masks = [], []
    for b in xy:
        lg, _, _ = pred.predict(box=b, multimask_output=False, return_logits=True)
        mk, _, _ = pred.predict(box=b, multimask_output=False)
        ref_logits.append(lg[0])
        ref_masks.append(mk[0])
    ref = np.stack(ref_logits)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.array_equal(ours > seg.threshold, np.stack(ref_masks))
    for i, exp in enumerate(_expected_per_lesion(ref, 0.0)):
        full = masks[i].full()
        assert np.array_equal(full[z], exp)
        assert not np.delete(full, z, axis=0).any()
    assert masks[0].full()[z].any() and masks[1].full()[z].any()
    both = np.stack(ref_masks).all(axis=0)
    assert both.any()  # the test exercises the overlap rule
    assert not (masks[0].full() & masks[1].full()).any()
    assert masks[0].box.key_slice == z and masks[0].box.z1 == z + 1


def test_medsam_preprocess_equals_medsam_inference(
        medsam_checkpoint: Path, tmp_path: Path,
        pat4_slice: tuple[Volume, int, list[Box3D]]) -> None:
    """Default ``preprocess="medsam"``: exactly MedSAM_Inference.py's pipeline (3-channel
    skimage resize to 1024, [0, 1], no mean/std, sigmoid > 0.5)."""
    from segment_anything import sam_model_registry

    vol, z, boxes = pat4_slice
    seg = M.create(_settings(tmp_path, checkpoint=str(medsam_checkpoint)))
    assert seg.preprocess == "medsam" and seg.threshold == 0.5
    memo = EncoderMemo()
    memo.install(seg.model)
    masks = seg.segment_slices(vol, [[boxes[0]], [boxes[1]]])
    xy = np.stack([M.box_pixels(b) for b in boxes])
    ours = seg.slice_scores(vol.array[z], xy)
    ref_sam = sam_model_registry["vit_b"](checkpoint=str(medsam_checkpoint)).eval()
    memo.install(ref_sam)
    probs, ref_masks = medsam_reference(ref_sam, M.window_uint8(vol.array[z], M.DEFAULT_WINDOW),
                                        xy)
    assert memo.runs == 1 and memo.hits == 2
    np.testing.assert_allclose(ours, probs, rtol=0, atol=1e-5)
    assert np.array_equal(ours > 0.5, ref_masks)
    for i, exp in enumerate(_expected_per_lesion(probs, 0.5)):
        assert np.array_equal(masks[i].full()[z], exp)
    assert ref_masks.any(axis=(1, 2)).all()


def test_automatic_mode_and_argument_checks(medsam_checkpoint: Path, tmp_path: Path) -> None:
    seg = M.create(_settings(tmp_path, checkpoint=str(medsam_checkpoint)))
    vol = _vol(np.zeros((4, 32, 32), np.float32))
    seen: list[Any] = []

    def fake(volume: Volume, per: Any, progress: Any = None) -> list[LesionMask]:
        seen.append(per)
        return [LesionMask(np.ones((1, 1, 1), bool), (b[0].z0, 0, 0), volume.shape, b[0])
                for b in per]

    boxes = [Box3D(0, 3, 1, 5, 2, 9, 1, score=0.9), Box3D(2, 4, 10, 20, 10, 20, 3)]
    with mock.patch.object(seg, "segment_slices", side_effect=fake):
        out = seg.segment(vol, boxes)
    assert [[(b.z0, b.y0, b.y1, b.x0, b.x1) for b in les] for les in seen[0]] == [
        [(0, 1, 5, 2, 9), (1, 1, 5, 2, 9), (2, 1, 5, 2, 9)],
        [(2, 10, 20, 10, 20), (3, 10, 20, 10, 20)]]
    assert [m.box for m in out] == boxes and out[0].score == 0.9
    for bad, word in (([[Box3D(0, 2, 1, 5, 1, 5, 0)]], r"\[0\]\[0\].*z1 == z0 \+ 1"),
                      ([[Box3D(0, 1, 1, 5, 1, 50, 0)]], "outside the volume"),
                      ([[Box3D(0, 1, 1, 5, 1, 5, 0)], []], r"\[1\]' must hold at least one")):
        with pytest.raises(ConfigError, match=word):
            seg.segment_slices(vol, bad)
    assert seg.last_stats.encoder_calls == 0


# --------------------------------------------------------------------------- training


def _blob_case(case_id: str, hu: np.ndarray, masks: list[np.ndarray]) -> Any:
    from autoprompt_seg.datasets import Case

    lab = np.zeros((1,) + hu.shape, bool)
    for m in masks:
        lab[0] |= m
    return Case(case_id, f"patient-{case_id}", lambda: _vol(hu), lambda v: lab,
                source="synthetic")


@pytest.fixture(scope="module")
def blobs() -> dict[str, Any]:
    """One training slice with four bright round nodules and a held-out slice with three
    others (seeded)."""
    rng = np.random.default_rng(1)
    tr_hu, tr_m = blob_slice(128, [(32, 32, 16), (34, 94, 20), (94, 34, 14), (92, 92, 18)], rng)
    te_hu, te_m = blob_slice(128, [(36, 64, 17), (94, 36, 15), (90, 96, 19)], rng)
    return {"train": [_blob_case("blobs-train", tr_hu, tr_m)], "test_hu": te_hu,
            "test_masks": te_m}


def _cfg(cache: Path, epochs: int) -> Any:
    from autoprompt_seg.train.core import TrainConfig

    return TrainConfig(model="medsam", epochs=epochs, batch_size=2, lr=1e-3, seed=0,
                       device="cpu", options={"embedding_cache": str(cache)})


def test_training_needs_a_base_checkpoint(tmp_path: Path, blobs: dict[str, Any]) -> None:
    from autoprompt_seg.train.core import TrainConfig, train_model

    cfg = TrainConfig(model="medsam", epochs=1, device="cpu")
    with pytest.raises(ConfigError, match="needs a base checkpoint"):
        train_model(cfg, blobs["train"], tmp_path / "run", settings=Settings(device="cpu"))
    with pytest.raises(ConfigError, match="unknown key.*box_jitter"):
        train_model(TrainConfig(model="medsam", options={"box_jitter": 3}), blobs["train"],
                     tmp_path / "run2", settings=Settings(device="cpu"))


@pytest.fixture(scope="module")
def trained(medsam_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
            blobs: dict[str, Any]) -> dict[str, Any]:
    from autoprompt_seg.train.core import train_model

    root = tmp_path_factory.mktemp("medsam_train")
    cache = root / "embeddings"
    res = train_model(_cfg(cache, 8), blobs["train"], root / "run",
                      settings=Settings(device="cpu", threads=2),
                      init_checkpoint=str(medsam_checkpoint))
    return {"result": res, "cache": cache, "root": root}


def test_decoder_training_lowers_the_loss_and_beats_the_untrained_model(
        trained: dict[str, Any], medsam_checkpoint: Path, tmp_path: Path,
        blobs: dict[str, Any]) -> None:
    from autoprompt_seg.weights import training_record

    res = trained["result"]
    epochs = [r for r in json.loads("[" + ",".join(
        (res.run_dir / "loss.jsonl").read_text().splitlines()) + "]") if r["kind"] == "epoch"]
    assert len(epochs) == 8
    assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"], epochs
    assert training_record(res.checkpoint) is None  # fine-tuned from a random base
    rec = training_record(res.checkpoint, require_trained_base=False)
    assert rec is not None and rec["model"] == "medsam" and rec["epochs"] == 8
    assert rec["base_trained"] is False
    assert rec["items"] == 4 and rec["slices"] == 1 and rec["trained"] == "mask_decoder"
    assert rec["preprocess"] == "medsam" and rec["window"] == [-600.0, 1500.0]
    assert len(list(trained["cache"].glob("*.npy"))) == 1  # one slice, encoded once

    base = M.create(_settings(tmp_path, checkpoint=str(medsam_checkpoint)))
    ft = M.create(_settings(tmp_path, checkpoint=str(res.checkpoint)))
    info = ft.info()
    # trained from random test weights: never reported as a trained model
    assert info.trained is False and info.details["provenance"] == "untrained test checkpoint"
    # the full SAM state dict: frozen encoders unchanged, the decoder changed
    sd_base, sd_ft = base.model.state_dict(), ft.model.state_dict()
    assert sd_base.keys() == sd_ft.keys()
    changed = {k for k in sd_base if not torch.equal(sd_base[k], sd_ft[k])}
    assert changed and all(k.startswith("mask_decoder.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("mask_decoder.transformer.") for k in changed)
    assert "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in changed
    memo = EncoderMemo()
    memo.install(base.model)
    memo.install(ft.model)
    te = _vol(blobs["test_hu"])
    gt = blobs["test_masks"]
    # each lesion on its own (no competition between lesions for pixels)
    boxes = [Box3D(0, 1, *mask_box(m), 0) for m in gt]
    d_base = [dice(base.segment_slices(te, [[b]])[0].full()[0], g) for b, g in zip(boxes, gt)]
    d_ft = [dice(ft.segment_slices(te, [[b]])[0].full()[0], g) for b, g in zip(boxes, gt)]
    assert memo.runs == 1 and memo.hits == 5
    assert np.mean(d_ft) > np.mean(d_base) + 0.1, (d_base, d_ft)
    assert min(d_ft) > max(d_base), (d_base, d_ft)


@pytest.mark.slow
def test_training_resumes_after_a_crash_to_the_same_weights(
        trained: dict[str, Any], medsam_checkpoint: Path, blobs: dict[str, Any]) -> None:
    """Two short runs sharing the embedding cache (no new encoding): one straight through,
    one interrupted in its second epoch and resumed; the weights end up identical."""
    from autoprompt_seg.train.core import train_model

    root, cache = trained["root"], trained["cache"]
    s = Settings(device="cpu", threads=2)
    a = train_model(_cfg(cache, 2), blobs["train"], root / "a", settings=s,
                    init_checkpoint=str(medsam_checkpoint))
    assert a.record["encoded_this_session"] == 0

    def crash(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(_cfg(cache, 2), blobs["train"], root / "b", settings=s,
                    init_checkpoint=str(medsam_checkpoint), progress=crash)
    assert (root / "b" / "state.pt").is_file() and not (root / "b" / "done.json").exists()
    b = train_model(_cfg(cache, 2), blobs["train"], root / "b", settings=s,
                    init_checkpoint=str(medsam_checkpoint))
    sa = torch.load(a.checkpoint, weights_only=True)
    sb = torch.load(b.checkpoint, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-6)


def test_resume_with_another_base_is_refused(tmp_path: Path, blobs: dict[str, Any]) -> None:
    from autoprompt_seg.train import medsam as T
    from autoprompt_seg.train.core import RunDir

    run = RunDir(tmp_path / "run", _cfg(tmp_path / "cache", 1), blobs["train"])
    T._check_state_base(run, "abc")  # no state yet: fine
    torch.save({"base_encoder": "abc"}, run.path / "state.pt")
    T._check_state_base(run, "abc")
    with pytest.raises(ConfigError, match="another base checkpoint"):
        T._check_state_base(run, "def")


def test_embedding_cache_is_reused_across_segmenters(medsam_checkpoint: Path,
                                                      tmp_path: Path) -> None:
    """With ``embedding_cache`` a slice is encoded once: a second segmenter (e.g. the
    few-shot model, whose encoder is frozen) reads the stored embedding. The ViT-B encoder
    is replaced by a cheap deterministic module to keep this unit test fast."""

    class CheapEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.linspace(-1, 1, 256).reshape(1, 256, 1, 1))

        def forward(self, x: Any) -> Any:
            pooled = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 64)
            return pooled * self.w

    cache = tmp_path / "emb"
    hu = np.full((2, 48, 48), -800.0, np.float32)
    hu[:, 16:30, 18:34] = 40.0
    hu[1, 20:24, 20:24] = 200.0  # the two slices differ (identical slices share a key)
    vol = _vol(hu)
    per = [[Box3D(0, 1, 14, 32, 16, 36, 0), Box3D(1, 2, 14, 32, 16, 36, 1)]]
    masks, calls = [], []
    for _ in range(2):
        seg = M.create(_settings(tmp_path, checkpoint=str(medsam_checkpoint),
                                 embedding_cache=str(cache)))
        seg.model.image_encoder = CheapEncoder()
        masks.append(seg.segment_slices(vol, per)[0].full())
        calls.append(seg.last_stats.encoder_calls)
    assert calls == [2, 0]
    assert len(list(cache.glob("*.npy"))) == 2
    assert np.array_equal(masks[0], masks[1])
