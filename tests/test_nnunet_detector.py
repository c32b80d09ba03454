"""The nnU-Net v2 detector, the nnU-Net full segmenter and the detector training recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.detect.nnunet import boxes_from_probabilities
from autoprompt_seg.errors import ConfigError, UnavailableError
from autoprompt_seg.models.nnunet.model import (
    NnunetOptions,
    canonical_axes,
    from_canonical,
    resolve_model_folder,
    to_canonical,
)
from autoprompt_seg.types import Box3D, Volume

sys.path.insert(0, str(Path(__file__).parent))
from nnunet_helpers import (  # noqa: E402
    TINY_SPACING,
    random_tiny_model,
    register_backends,
    tiny_chest,
    volume_of,
    write_msd_dataset,
)

# ----------------------------------------------------------------- probability -> boxes


def _ball(shape, centre, radius_vox, peak=0.9):
    z, y, x = np.indices(shape)
    d2 = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radius_vox, strict=True))
    return np.where(d2 <= 1.0, peak * (1.0 - 0.3 * d2), 0.0).astype(np.float32)


def test_several_lesions_give_one_box_each_with_max_score_and_key_slice():
    shape = (30, 60, 60)
    p = np.maximum.reduce([_ball(shape, (8, 15, 15), (3, 4, 4), 0.95),
                           _ball(shape, (20, 40, 20), (4, 6, 6), 0.80),
                           _ball(shape, (15, 20, 45), (2, 3, 3), 0.70)])
    boxes = boxes_from_probabilities(p, (1.0, 1.0, 1.0), threshold=0.5, min_volume_ml=0.0,
                                     margin_mm=0.0)
    assert len(boxes) == 3
    assert [round(b.score, 2) for b in boxes] == [0.95, 0.80, 0.70]  # by decreasing score
    for b, (cz, cy, cx) in zip(boxes, [(8, 15, 15), (20, 40, 20), (15, 20, 45)], strict=True):
        assert b.z0 <= cz < b.z1 and b.y0 <= cy < b.y1 and b.x0 <= cx < b.x1
        assert b.key_slice == cz  # a ball's largest cross-section is its centre slice
        assert b.source == "nnunet" and not b.from_person
    # tight boxes: the component's extent at p >= 0.5
    m = p >= 0.5
    b = boxes[0]
    sub = np.zeros_like(m)
    sub[b.slices()] = m[b.slices()]
    assert sub[:, :, :30].sum() == m[:, :30, :30].sum()


def test_touching_lesions_form_one_box_and_overlapping_margins_merge():
    shape = (20, 40, 60)
    a = _ball(shape, (10, 20, 20), (4, 6, 6))
    b = _ball(shape, (10, 20, 31), (4, 6, 6))  # touches a
    boxes = boxes_from_probabilities(np.maximum(a, b), (1.0, 1.0, 1.0), min_volume_ml=0.0,
                                     margin_mm=0.0)
    assert len(boxes) == 1 and boxes[0].x0 <= 15 and boxes[0].x1 >= 37
    # apart by a 3-voxel gap: separate without margin, merged when the margins overlap
    c = _ball(shape, (10, 20, 36), (4, 6, 6))
    p = np.maximum(a, c)
    assert len(boxes_from_probabilities(p, (1.0, 1.0, 1.0), min_volume_ml=0.0,
                                        margin_mm=0.0)) == 2
    merged = boxes_from_probabilities(p, (1.0, 1.0, 1.0), min_volume_ml=0.0, margin_mm=2.0)
    assert len(merged) == 1
    assert (merged[0].x0, merged[0].x1) == (14 - 2, 43 + 2)  # union of both grown boxes
    apart = boxes_from_probabilities(p, (1.0, 1.0, 1.0), min_volume_ml=0.0, margin_mm=2.0,
                                     merge_overlapping=False)
    assert len(apart) == 2


def test_specks_below_min_volume_are_dropped():
    shape = (20, 40, 40)
    p = _ball(shape, (10, 20, 20), (3, 5, 5))
    p[2, 2, 2] = p[2, 2, 3] = 0.99  # a 2-voxel speck with the highest probability
    p[17, 35, 35] = 0.6
    kept = boxes_from_probabilities(p, (2.0, 1.0, 1.0), min_volume_ml=0.05, margin_mm=0.0)
    assert len(kept) == 1 and kept[0].z0 > 2
    every = boxes_from_probabilities(p, (2.0, 1.0, 1.0), min_volume_ml=0.0, margin_mm=0.0)
    assert len(every) == 3 and every[0].score == pytest.approx(0.99)
    # 0.004 ml per speck voxel pair: 2 voxels x 2 mm^3 = 0.004 ml -> kept at 0.004, not 0.0041
    assert len(boxes_from_probabilities(p, (2.0, 1.0, 1.0), min_volume_ml=0.004,
                                        margin_mm=0.0)) == 2
    assert len(boxes_from_probabilities(p, (2.0, 1.0, 1.0), min_volume_ml=0.0041,
                                        margin_mm=0.0)) == 1


def test_lesion_at_the_volume_edge_is_clipped_into_the_grid():
    shape = (16, 32, 32)
    p = _ball(shape, (0, 31, 0), (3, 5, 5))
    boxes = boxes_from_probabilities(p, (1.0, 1.0, 1.0), min_volume_ml=0.0, margin_mm=4.0)
    assert len(boxes) == 1
    b = boxes[0]
    assert (b.z0, b.y0, b.x0) == (0, 31 - 5 - 4, 0) and b.y1 == 32
    assert b.fits(shape) and b.key_slice == 0


def test_anisotropic_spacing_margin_and_volume_are_physical():
    shape = (20, 80, 80)
    p = _ball(shape, (10, 40, 40), (2, 10, 10))
    spacing = (5.0, 0.5, 0.5)  # 5 mm slices, 0.5 mm pixels
    b = boxes_from_probabilities(p, spacing, min_volume_ml=0.0, margin_mm=5.0)[0]
    t = boxes_from_probabilities(p, spacing, min_volume_ml=0.0, margin_mm=0.0)[0]
    assert (t.z0 - b.z0, b.z1 - t.z1) == (1, 1)  # 5 mm = 1 slice
    assert (t.y0 - b.y0, b.x1 - t.x1) == (10, 10)  # 5 mm = 10 pixels
    n = int((p >= 0.5).sum())
    vol_ml = n * 5.0 * 0.5 * 0.5 / 1000
    assert boxes_from_probabilities(p, spacing, min_volume_ml=vol_ml * 0.99, margin_mm=0)
    assert not boxes_from_probabilities(p, spacing, min_volume_ml=vol_ml * 1.01, margin_mm=0)


def test_empty_map_and_bad_arguments():
    assert boxes_from_probabilities(np.zeros((4, 4, 4)), (1, 1, 1)) == []
    with pytest.raises(ConfigError, match="threshold"):
        boxes_from_probabilities(np.zeros((4, 4, 4)), (1, 1, 1), threshold=0.0)
    with pytest.raises(ConfigError, match="prob"):
        boxes_from_probabilities(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ConfigError, match="spacing"):
        boxes_from_probabilities(np.zeros((4, 4, 4)), (1, 0, 1))


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("opts,match", [
    ({"threshold": 1.5}, "nnunet.threshold"),
    ({"threshold": "high"}, "nnunet.threshold"),
    ({"min_volume_ml": -1}, "nnunet.min_volume_ml"),
    ({"tta": "yes"}, "nnunet.tta"),
    ({"folds": ["x"]}, "nnunet.folds"),
    ({"folds": []}, "nnunet.folds"),
    ({"model_dir": 3}, "nnunet.model_dir"),
    ({"thresh": 0.5}, "unknown key"),
])
def test_bad_options_are_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match) as e:
        NnunetOptions.from_settings(Settings(options={"nnunet": opts}))
    assert e.value.exit_code == 78


def test_missing_model_folder_and_files_name_the_file(tmp_path):
    with pytest.raises(UnavailableError, match="does not exist") as e:
        resolve_model_folder(tmp_path / "nope")
    assert e.value.exit_code == 69
    model = random_tiny_model(tmp_path / "m")
    (model / "plans.json").rename(model / "plans.bak")
    with pytest.raises(UnavailableError, match=r"plans\.json"):
        resolve_model_folder(model)
    (model / "plans.bak").rename(model / "plans.json")
    with pytest.raises(UnavailableError, match=r"fold_3.*checkpoint_final\.pth"):
        resolve_model_folder(model, folds=[3])
    with pytest.raises(ConfigError, match="3d_fullres"):
        resolve_model_folder(model, configuration="3d_fullres")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UnavailableError, match="cannot be read safely"):
        resolve_model_folder(model)
    # default location: the weights folder entry, with a message that says how to get one
    from autoprompt_seg.detect.nnunet import create

    with pytest.raises(UnavailableError, match="nnunet_lung_detector"):
        create(Settings(device="cpu", weights_dir=tmp_path / "empty"))


def test_canonical_layout_roundtrip():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 5))
    # a coronal-ish layout: array x -> L, y -> S (reversed), z -> P
    d = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float).T
    d = np.stack([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]], axis=1)
    perm, flip = canonical_axes(d)
    c = to_canonical(a, d)
    assert c.shape == tuple(a.shape[i] for i in perm)
    assert np.array_equal(from_canonical(c, d), a)
    assert canonical_axes(np.eye(3)) == ((0, 1, 2), (False, False, False))


# ------------------------------------------------------------------ random-weight model


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("nnunet_random") / "model", seed=3,
                             foreground_bias=0.0)


def _settings(model: Path, tmp: Path, **opts) -> Settings:
    return Settings(device="cpu", threads=2, weights_dir=tmp / "weights",
                    options={"nnunet": {"model_dir": str(model), **opts}})


def test_random_model_runs_reports_untrained_and_sets_no_env(random_model, tmp_path, capsys):
    from autoprompt_seg.detect.nnunet import create
    from autoprompt_seg.weights import sha256_file

    before = {k for k in os.environ if k.startswith("nnUNet")}
    det = create(_settings(random_model, tmp_path, threshold=0.5, min_volume_ml=0.0))
    vol = volume_of(tiny_chest(7))
    boxes = det.detect(vol)
    info = det.info()
    assert info.trained is False and info.details["status"] == "untrained test checkpoint"
    assert info.checkpoint_sha256 == sha256_file(random_model / "fold_0" /
                                                 "checkpoint_final.pth")
    assert info.details["tta_mirroring"] is False and info.details["configuration"] == \
        "3d_detector"
    assert all(isinstance(b, Box3D) and b.fits(vol.shape) for b in boxes)
    out = det.model.predict(vol)
    assert out.n_patches >= 1 and out.foreground.shape == vol.shape
    assert {k for k in os.environ if k.startswith("nnUNet")} == before
    captured = capsys.readouterr()
    assert captured.out == ""  # nnU-Net's prints go to the log, not stdout


def test_oblique_and_flipped_input_maps_back_exactly(random_model, tmp_path):
    """A volume stored with flipped axes gives the same mask, flipped back."""
    from autoprompt_seg.segment.nnunet_seg import create

    seg = create(_settings(random_model, tmp_path))
    chest = tiny_chest(5)
    vol = volume_of(chest)
    flipped_dir = np.diag([-1.0, 1.0, -1.0])  # x and z stored reversed
    vol_f = Volume(array=np.ascontiguousarray(chest.hu[::-1, :, ::-1]), spacing=vol.spacing,
                   origin=vol.origin, direction=flipped_dir, source_format="synthetic")
    m = seg.full_mask(vol)
    m_f = seg.full_mask(vol_f)
    assert 0 < m.sum() < m.size
    assert np.array_equal(m_f, m[::-1, :, ::-1])


def _nnunetv2_predict(model: Path, vol: Volume, work: Path, fold: str) -> np.ndarray:
    """Run the ``nnUNetv2_predict`` CLI on a NIfTI of ``vol``; env vars only for it."""
    import json

    import SimpleITK as sitk

    from autoprompt_seg.io.image import volume_to_sitk

    plans = json.loads((model / "plans.json").read_text())
    cfg = next(iter(plans["configurations"]))
    dataset = plans["dataset_name"]
    res = work / "results" / dataset / f"nnUNetTrainer__{plans['plans_name']}__{cfg}"
    shutil.copytree(model, res)
    (work / "in").mkdir()
    sitk.WriteImage(volume_to_sitk(vol), str(work / "in" / "case_0000.nii.gz"))
    env = dict(os.environ, nnUNet_results=str(work / "results"), nnUNet_raw=str(work / "raw"),
               nnUNet_preprocessed=str(work / "pre"))
    exe = Path(sys.executable).parent / "nnUNetv2_predict"
    cmd = [str(exe), "-i", str(work / "in"), "-o", str(work / "out"), "-d", dataset,
           "-p", plans["plans_name"], "-c", cfg, "-f", fold, "--disable_tta",
           "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_progress_bar"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "case.nii.gz")))


def test_full_segmenter_equals_nnunetv2_predict_random_weights(random_model, tmp_path):
    from autoprompt_seg.segment.nnunet_seg import create

    vol = volume_of(tiny_chest(9))
    ours = create(_settings(random_model, tmp_path)).full_mask(vol)
    theirs = _nnunetv2_predict(random_model, vol, tmp_path / "cli", "0")
    assert theirs.shape == ours.shape
    assert 0 < theirs.sum() < theirs.size  # a non-trivial mask, so equality means something
    assert np.array_equal(ours, theirs)


def test_segmenter_returns_components_overlapping_each_box(random_model, tmp_path):
    from scipy import ndimage as ndi

    from autoprompt_seg.segment.nnunet_seg import create

    seg = create(_settings(random_model, tmp_path))
    vol = volume_of(tiny_chest(9))
    full = seg.full_mask(vol) > 0
    lab, n = ndi.label(full, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    big = int(np.argmax(sizes)) + 1
    zz, yy, xx = np.nonzero(lab == big)
    i = len(zz) // 2
    box = Box3D(z0=int(zz[i]), z1=int(zz[i]) + 1, y0=int(yy[i]), y1=int(yy[i]) + 1,
                x0=int(xx[i]), x1=int(xx[i]) + 1, key_slice=int(zz[i]))
    empty_box = Box3D(z0=0, z1=1, y0=0, y1=1, x0=0, x1=1, key_slice=0)
    assert not full[0, 0, 0]
    masks = seg.segment(vol, [box, empty_box])
    assert np.array_equal(masks[0].full(), lab == big)  # the whole component, not the box
    assert masks[1].is_empty


@pytest.mark.slow
def test_predict_path_end_to_end_with_test_weights(random_model, medsam2_checkpoint, tmp_path,
                                                   monkeypatch):
    """`--detector nnunet --segmenter medsam2` end to end, with test weights for both."""
    from autoprompt_seg import registry
    from autoprompt_seg.predict import predict_path
    from autoprompt_seg.synthetic import synthetic_study

    register_backends(monkeypatch)
    study = synthetic_study(tmp_path / "study", shape=(24, 48, 48), spacing=TINY_SPACING,
                            n_tumours=2, seed=4, tumour_radius_mm=[12, 10])
    assert "medsam2" in registry.names("segmenter")
    settings = _settings(random_model, tmp_path, threshold=0.5, min_volume_ml=0.05)
    settings = settings.with_(options={**settings.options,
                                       "medsam2_checkpoint": str(medsam2_checkpoint)})
    res = predict_path(study.study_dir, tmp_path / "out", detector="nnunet",
                       segmenter="medsam2", settings=settings)
    det, seg = res.prediction.detector, res.prediction.segmenter
    assert det.name == "nnunet" and det.trained is False
    assert seg.name == "medsam2" and seg.trained is False
    report = json.loads(Path(res.outputs["report"]).read_text())
    assert report["backends"]["segmenter"]["checkpoint_status"] == "untrained test checkpoint"
    assert len(res.prediction.lesions) >= 1  # the random detector does propose boxes
    assert res.outputs and all(Path(p).exists() for p in res.outputs.values())
    for les in res.prediction.lesions:
        assert les.box.source == "nnunet"


# --------------------------------------------------------------- conversion (real data)


def test_convert_dicom_rtstruct_study(pycerr_root, tmp_path):
    import SimpleITK as sitk

    from autoprompt_seg.models.nnunet.dataset import convert_dataset

    src = tmp_path / "studies"
    src.mkdir()
    (src / "pat_2").symlink_to(pycerr_root / "pat_2", target_is_directory=True)
    n = convert_dataset(src, tmp_path / "raw", roi_name="GTV-1")
    assert n == 1
    lab = sitk.ReadImage(str(tmp_path / "raw" / "labelsTr" / "lung_0000.nii.gz"))
    img = sitk.ReadImage(str(tmp_path / "raw" / "imagesTr" / "lung_0000_0000.nii.gz"))
    assert lab.GetSize() == img.GetSize()
    ml = sitk.GetArrayFromImage(lab).sum() * np.prod(lab.GetSpacing()) / 1000
    assert 3 < ml < 12  # pat_2's GTV-1 is about 6.5 ml
    with pytest.raises(Exception, match="ROI 'NOPE' not found"):
        convert_dataset(src, tmp_path / "raw2", roi_name="NOPE")


# ------------------------------------------------------------- a tiny trained detector


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> Path:
    """Train a tiny detector once per session on six seeded synthetic chests (CPU)."""
    from autoprompt_seg.models.nnunet.train import DetectorTrainConfig, train_detector

    root = tmp_path_factory.mktemp("nnunet_train")
    data = write_msd_dataset(root / "Task06_Lung", seeds=[0, 1, 2, 3, 4, 5])
    res = train_detector(DetectorTrainConfig(
        data=data, out=root / "model", epochs=10, iterations_per_epoch=20, val_iterations=1,
        target_spacing_mm=TINY_SPACING[0], device="cpu", threads=2, base_features=8,
        max_features=64, max_stages=4, initial_lr=0.05, augment=False, register=True,
        weights_dir=root / "weights"))
    assert (res.model_dir / "fold_all" / "checkpoint_final.pth").is_file()
    assert res.registered and (root / "weights" / "nnunet_lung_detector").is_dir()
    return res.model_dir


@pytest.mark.slow
def test_trained_detector_finds_the_synthetic_tumours(trained_detector, tmp_path):
    from autoprompt_seg.detect.nnunet import create

    det = create(Settings(device="cpu", threads=2, weights_dir=trained_detector.parent /
                          "weights", options={"nnunet": {"min_volume_ml": 0.05}}))
    assert det.info().trained is False  # registered, but not a known release
    found = total = 0
    for seed in (100, 101, 102):
        chest = tiny_chest(seed)
        boxes = det.detect(volume_of(chest))
        for t in range(1, len(chest.tumours) + 1):
            total += 1
            truth = chest.labels == t
            if any(truth[b.slices()].any() for b in boxes):
                found += 1
        assert len(boxes) <= 6, boxes  # not a box on every vessel
    assert found >= total - 1, f"{found}/{total} tumours found"


@pytest.mark.slow
def test_full_segmenter_equals_nnunetv2_predict_trained(trained_detector, tmp_path):
    from autoprompt_seg.segment.nnunet_seg import create

    vol = volume_of(tiny_chest(101))
    ours = create(_settings(trained_detector, tmp_path)).full_mask(vol)
    theirs = _nnunetv2_predict(trained_detector, vol, tmp_path / "cli", "all")
    assert np.array_equal(ours, theirs)


def test_cli_detector_train_reports_bad_data_with_exit_codes(tmp_path):
    from click.testing import CliRunner

    from autoprompt_seg.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["detector", "train", str(empty), "--out", str(tmp_path / "m"),
                                  "--device", "cpu"])
    assert r.exit_code == 65, r.output
    assert "holds no cases" in r.output
    r = CliRunner().invoke(main, ["detector", "train", str(empty), "--out", str(tmp_path / "m"),
                                  "--target-spacing", "50"])
    assert r.exit_code == 2 and "target-spacing" in r.output
    from autoprompt_seg.models.nnunet.train import DetectorTrainConfig

    with pytest.raises(ConfigError, match="initial_lr"):
        DetectorTrainConfig(data=empty, out=tmp_path / "m", initial_lr=0.0)
