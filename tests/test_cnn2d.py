"""The 2-D CNN baselines (``unet``, ``deeplabv3``): training on seeded synthetic data, resume
after a crash, checkpoints and provenance, backbone weights, component assignment, and a
real-CT smoke test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.datasets import Case
from autoprompt_seg.errors import ConfigError, UnavailableError
from autoprompt_seg.types import Box3D, Volume

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("torchvision")

from autoprompt_seg.models.cnn2d import checkpoint as cnn2d_ck  # noqa: E402
from autoprompt_seg.segment import slicewise  # noqa: E402
from autoprompt_seg.train import cnn2d  # noqa: E402
from autoprompt_seg.train.core import TrainConfig, train_model  # noqa: E402

SMALL_UNET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads are many times slower, and
    results do not depend on the thread count then."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- synthetic data


def synth_volume(seed: int, shape: tuple[int, int, int] = (8, 64, 64)
                 ) -> tuple[Volume, np.ndarray]:
    """Noisy lung-like background (-800 HU) with one or two bright ellipsoid tumours."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    hu = rng.normal(-800.0, 60.0, size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    for _ in range(int(rng.integers(1, 3))):
        c = (rng.uniform(2, nz - 2), rng.uniform(14, ny - 14), rng.uniform(14, nx - 14))
        r = (rng.uniform(1.2, 2.5), rng.uniform(4, 10), rng.uniform(4, 10))
        mask |= sum(((a - ci) / ri) ** 2 for a, ci, ri in zip((zz, yy, xx), c, r)) <= 1
    hu[mask] = rng.normal(40.0, 25.0, size=int(mask.sum()))
    vol = Volume(array=hu, spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, mask


def synth_case(seed: int) -> Case:
    vol, mask = synth_volume(seed)
    return Case(f"syn{seed}", f"p{seed}", lambda: vol, lambda v: mask,
                source=f"synthetic:{seed}")


TRAIN_CASES = [synth_case(i) for i in range(6)]
HELD_OUT = [synth_volume(100 + i) for i in range(4)]


def segmenter(model: str, checkpoint: Path, **opts):
    from autoprompt_seg.models.cnn2d.segmenter import create_deeplab as deeplab
    from autoprompt_seg.models.cnn2d.segmenter import create_unet as unet

    settings = Settings(device="cpu", options={model: {"checkpoint": str(checkpoint), **opts}})
    return (unet if model == "unet" else deeplab)(settings)


def dice(seg) -> float:
    out = []
    for vol, mask in HELD_OUT:
        pred = seg.full_mask(vol)
        assert pred.shape == mask.shape  # back on the volume's own grid
        out.append(2 * (pred & mask).sum() / max(1, pred.sum() + mask.sum()))
    return float(np.mean(out))


def step_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "step"]


def _train_and_compare(cfg: TrainConfig, tmp_path: Path) -> None:
    res = train_model(cfg, TRAIN_CASES, tmp_path / "run", settings=Settings(device="cpu"))
    losses = step_losses(res.run_dir)
    assert len(losses) == cfg.epochs * cfg.steps_per_epoch
    k = max(3, len(losses) // 4)
    assert np.mean(losses[-k:]) < 0.8 * np.mean(losses[:k]), losses

    trained = segmenter(cfg.model, res.checkpoint)
    info = trained.info()
    assert info.trained is True
    assert info.details["provenance"] == (
        f"trained here: {cfg.model}, 6 case(s), {cfg.epochs} epoch(s), data {res.data_hash}")
    assert set(trained.torch_modules()) == {"net"} and trained.promptable is False

    net0, arch, window, _ = cnn2d.initial_net(cfg)  # the same seed, zero training
    untrained_ck = cnn2d_ck.save_checkpoint(tmp_path / "initial.pt", cfg.model, arch, window,
                                             cfg.image_size, net0.state_dict())
    untrained = segmenter(cfg.model, untrained_ck)
    assert untrained.info().trained is False
    d_trained, d_untrained = dice(trained), dice(untrained)
    assert d_trained > d_untrained + 0.1, (d_trained, d_untrained)


# --------------------------------------------------------------------------- training


def test_unet_tiny_training_lowers_loss_and_beats_its_untrained_self(tmp_path):
    cfg = TrainConfig(model="unet", epochs=2, batch_size=6, lr=5e-3, steps_per_epoch=20,
                      image_size=64, seed=0, device="cpu",
                      options={"arch": SMALL_UNET, "log_every": 1})
    _train_and_compare(cfg, tmp_path)


@pytest.mark.slow
def test_deeplabv3_tiny_training_lowers_loss_and_beats_its_untrained_self(tmp_path):
    # 32 px (the 64 px volumes are resized): ResNet-50 on this CPU costs ~1 s per step
    # (seeds 0-4 measured: trained Dice 0.13-0.48, untrained 0.00-0.04)
    cfg = TrainConfig(model="deeplabv3", epochs=1, batch_size=4, lr=3e-3, steps_per_epoch=22,
                      image_size=32, seed=0, device="cpu",
                      options={"arch": "resnet50", "log_every": 1, "bn_batches": 12,
                               "pos_fraction": 0.75})
    _train_and_compare(cfg, tmp_path)


def test_resume_after_a_crash_gives_the_uninterrupted_weights(tmp_path):
    cfg = TrainConfig(model="unet", epochs=3, batch_size=4, lr=5e-3, steps_per_epoch=3,
                      image_size=32, seed=1, device="cpu",
                      options={"arch": SMALL_UNET})
    cases = TRAIN_CASES[:3]
    whole = train_model(cfg, cases, tmp_path / "whole")

    class Crash(RuntimeError):
        pass

    def crash_in_epoch_2(done: int, total: int) -> None:
        if done == cfg.steps_per_epoch + 2:  # second step of epoch 2
            raise Crash()

    with pytest.raises(Crash):
        train_model(cfg, cases, tmp_path / "crashed", progress=crash_in_epoch_2)
    assert not (tmp_path / "crashed" / "unet.pt").exists()
    seen: list[int] = []
    resumed = train_model(cfg, cases, tmp_path / "crashed",
                          progress=lambda done, total: seen.append(done))
    assert seen[0] == cfg.steps_per_epoch + 1  # restarted at epoch 2, step 1
    assert seen[-1] == cfg.epochs * cfg.steps_per_epoch
    a = torch.load(whole.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.final_loss == pytest.approx(whole.final_loss)
    # a finished run is returned as is
    again = train_model(cfg, cases, tmp_path / "crashed",
                        progress=lambda d, t: pytest.fail("retrained"))
    assert again.sha256 == resumed.sha256


def test_fine_tuning_starts_from_the_given_checkpoint(tmp_path):
    cfg = TrainConfig(model="unet", epochs=1, batch_size=2, lr=1e-3, steps_per_epoch=1,
                      image_size=32, seed=5, device="cpu", options={"arch": SMALL_UNET})
    torch.manual_seed(123)
    start = cnn2d_ck.build_net("unet", SMALL_UNET)
    ck = cnn2d_ck.save_checkpoint(tmp_path / "start.pt", "unet", SMALL_UNET, (-900, 300), 32,
                                   start.state_dict())
    net, arch, window, info = cnn2d.initial_net(cfg, ck)
    assert window == (-900.0, 300.0) and info["init"] == "checkpoint"
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in net.state_dict().items())
    res = train_model(cfg, TRAIN_CASES[:2], tmp_path / "ft", init_checkpoint=str(ck))
    assert res.record["start"]["sha256"] == info["sha256"]
    bad = TrainConfig(model="unet", epochs=1, image_size=32,
                      options={"arch": {"channels": [4, 8, 16]}})
    with pytest.raises(ConfigError, match="differs from the architecture"):
        cnn2d.initial_net(bad, ck)


def test_training_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        cnn2d.initial_net(TrainConfig(model="unet", options={"lr_decay": 1}))
    with pytest.raises(ConfigError, match="only applies to deeplabv3"):
        cnn2d.initial_net(TrainConfig(model="unet", options={"backbone_weights": "x.pth"}))
    with pytest.raises(ConfigError, match="divisible by 4"):
        cnn2d.initial_net(TrainConfig(model="unet", image_size=30,
                                      options={"arch": SMALL_UNET}))
    with pytest.raises(ConfigError, match="batch_size' must be >= 2"):
        train_model(TrainConfig(model="deeplabv3", batch_size=1, epochs=1, image_size=32),
                    TRAIN_CASES[:1], tmp_path / "dl")


# --------------------------------------------------------------------------- checkpoints


def _random_unet_checkpoint(path: Path, arch=SMALL_UNET, size: int = 32) -> Path:
    torch.manual_seed(0)
    net = cnn2d_ck.build_net("unet", arch)
    return cnn2d_ck.save_checkpoint(path, "unet", arch, (-1000, 400), size, net.state_dict())


def test_checkpoint_round_trip_and_untrained_provenance(tmp_path):
    ck = _random_unet_checkpoint(tmp_path / "rand.pt")
    raw = torch.load(ck, weights_only=True)
    assert raw["format"] == "autoseg-cnn2d/1" and raw["model"] == "unet"
    assert raw["preprocess"] == {"window": [-1000.0, 400.0], "image_size": 32}
    seg = segmenter("unet", ck, batch_size=3)
    info = seg.info()
    assert info.trained is False
    assert info.details["provenance"] == "untrained test checkpoint"
    assert info.details["architecture"]["channels"] == [8, 16, 32]
    assert info.checkpoint_sha256 and info.kind == "segmenter" and info.name == "unet"
    # the backend's slice-wise inference equals the network run by hand
    vol, _ = synth_volume(7)
    from autoprompt_seg.train.data import resize_images, window_ct

    net = cnn2d_ck.load_net(cnn2d_ck.read_checkpoint(ck)).eval()
    with torch.no_grad():
        x = resize_images(torch.from_numpy(window_ct(vol.array))[:, None], 32)
        logits = resize_images(net(x), (64, 64))
    expect = (logits[:, 1] > logits[:, 0]).numpy()
    assert np.array_equal(seg.full_mask(vol), expect)


def test_bad_checkpoints_are_refused_with_the_file_named(tmp_path):
    good = _random_unet_checkpoint(tmp_path / "good.pt")
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UnavailableError, match="truncated.pt.*truncated or corrupt"):
        segmenter("unet", trunc)
    with pytest.raises(UnavailableError, match="missing.pt.*no such file"):
        segmenter("unet", tmp_path / "missing.pt")
    other = tmp_path / "plain_state_dict.pt"
    torch.save(torch.load(good, weights_only=True)["state_dict"], other)
    with pytest.raises(ConfigError, match="plain_state_dict.pt.*not an autoseg-cnn2d/1"):
        segmenter("unet", other)
    with pytest.raises(ConfigError, match="good.pt.*holds a unet model, not deeplabv3"):
        segmenter("deeplabv3", good)
    wrong = _random_unet_checkpoint(tmp_path / "wrong.pt")
    obj = torch.load(wrong, weights_only=True)
    obj["arch"]["channels"] = [8, 16, 64]  # the weights no longer fit the stated arch
    torch.save(obj, wrong)
    with pytest.raises(ConfigError, match="wrong.pt.*does not fit.*shape mismatch"):
        segmenter("unet", wrong)
    with pytest.raises(UnavailableError, match="--checkpoint FILE"):
        from autoprompt_seg.models.cnn2d.segmenter import create_unet as create

        create(Settings(device="cpu"))
    with pytest.raises(ConfigError, match="unknown key"):
        segmenter("unet", good, tile=2)


def test_deeplab_backbone_weights_load_strictly_from_torchvision_format(tmp_path):
    import torchvision

    from autoprompt_seg.models.cnn2d.deeplab import load_backbone_weights

    torch.manual_seed(3)
    r50 = torchvision.models.resnet50(weights=None).state_dict()  # ImageNet file format
    assert "fc.weight" in r50
    f50 = tmp_path / "resnet50-imagenet.pth"
    torch.save(r50, f50)
    cfg = TrainConfig(model="deeplabv3", image_size=32,
                      options={"arch": "resnet50", "backbone_weights": str(f50)})
    net, arch, _, start = cnn2d.initial_net(cfg)
    assert arch == {"backbone": "resnet50"} and start["init"] == "backbone"
    bb = net.backbone.state_dict()
    assert all(torch.equal(bb[k], r50[k]) for k in bb)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    f18 = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), f18)
    with pytest.raises(ConfigError, match="resnet18-imagenet.pth.*does not fit"):
        load_backbone_weights(net, f18)
    with pytest.raises(UnavailableError, match="nothing.pth"):
        load_backbone_weights(net, tmp_path / "nothing.pth")
    # the checkpoint's state dict is torchvision's own: it loads into a plain model
    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=2, aux_loss=False)
    tv.load_state_dict(net.state_dict(), strict=True)


# --------------------------------------------------------------------------- components


def test_components_go_to_the_box_they_overlap_most():
    mask = np.zeros((6, 20, 20), bool)
    mask[1:3, 2:6, 2:6] = True  # component A (32 voxels)
    mask[3:5, 10:16, 10:16] = True  # component B (72 voxels)
    mask[0, 18, 18] = True  # component C, overlapped by no box
    box_a = Box3D(z0=0, z1=6, y0=0, y1=5, x0=0, x1=8, key_slice=1)  # all of A
    box_b = Box3D(z0=3, z1=4, y0=10, y1=12, x0=10, x1=12, key_slice=3)  # 4 voxels of B
    box_ab = Box3D(z0=1, z1=5, y0=4, y1=12, x0=4, x1=12, key_slice=3)  # 8 of A, 16 of B
    empty = Box3D(z0=5, z1=6, y0=0, y1=1, x0=0, x1=1, key_slice=5)
    fulls, n, unclaimed = slicewise.assign_components(mask, [box_a, box_b, box_ab, empty])
    assert n == 3 and unclaimed == 1
    a = np.zeros_like(mask)
    a[1:3, 2:6, 2:6] = True
    b = mask & ~a
    b[0, 18, 18] = False
    assert np.array_equal(fulls[0], a)  # whole A, not cut at the box
    assert not fulls[1].any()  # B overlaps box_ab more
    assert np.array_equal(fulls[2], b)
    assert not fulls[3].any()
    whole = Box3D(z0=0, z1=6, y0=0, y1=20, x0=0, x1=20, key_slice=3)
    masks = slicewise.masks_for_boxes(mask, [whole])
    assert np.array_equal(masks[0].full(), mask)  # the none detector's box gets everything
    tie = Box3D(z0=1, z1=3, y0=2, y1=6, x0=2, x1=6, key_slice=1)
    first, _, _ = slicewise.assign_components(mask, [tie, tie])
    assert first[0].sum() == 32 and not first[1].any()  # ties: the earlier box


# --------------------------------------------------------------------------- real CT


def test_random_unet_on_real_ct_through_the_pipeline(pat4_dir, tmp_path):
    from autoprompt_seg.detect.none import NoPromptDetector
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.pipeline import run
    from autoprompt_seg.types import Prediction

    volume, _ = load_study(pat4_dir)
    ck = _random_unet_checkpoint(tmp_path / "random_unet.pt", size=256)
    seg = segmenter("unet", ck, batch_size=8)
    pred = run(volume, NoPromptDetector(), seg)
    assert isinstance(pred, Prediction)
    assert pred.segmenter.trained is False
    assert pred.segmenter.details["provenance"] == "untrained test checkpoint"
    assert pred.segmenter.details["image_size"] == 256
    union = np.zeros(volume.shape, bool)
    for les in pred.lesions:
        union |= les.full()
    assert np.array_equal(union, seg.full_mask(volume))  # every voxel of the mask, once
