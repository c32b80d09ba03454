"""The medsam2 segmenter: units on the CPU, equivalence with MedSAM2's reference procedure,
and an end-to-end run on a real pycerr study.

Random weights (seeded, MedSAM2's exact format) make no accuracy claim: the masks are
compared with the reference procedure, never with ground truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.errors import ConfigError, UnavailableError
from autoprompt_seg.types import Box3D, Volume

M = pytest.importorskip("autoprompt_seg.models.medsam2")


# --------------------------------------------------------------------------- fast units


def test_import_has_no_side_effects() -> None:
    code = ("import sys, autoprompt_seg.models.medsam2 as m; "
            "print(sorted(k for k in ('torch', 'sam2', 'hydra', 'omegaconf') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_options_defaults_and_validation(tmp_path: Path) -> None:
    o = M.MedSAM2Options.from_settings(Settings(weights_dir=tmp_path))
    assert o.window == (-600.0, 1500.0) and o.empty_stop == 3 and o.z_margin_mm == 10.0
    assert o.scaling == "study-minmax"  # MedSAM2's CT script (issue 12)
    o = M.MedSAM2Options.from_settings(Settings(weights_dir=tmp_path, options={
        "medsam2_window": "40,400", "medsam2_empty_stop": 5, "medsam2_z_margin_mm": 0,
        "medsam2_cache_mb": 64, "medsam2_encoder_batch": 4, "medsam2_bf16": False,
        "medsam2_scaling": "window"}))
    assert o.window == (40.0, 400.0) and o.empty_stop == 5 and o.encoder_batch == 4
    assert o.scaling == "window"
    for key, bad in (("medsam2_window", (40,)), ("medsam2_window", (40, -1)),
                     ("medsam2_empty_stop", 0), ("medsam2_empty_stop", 1.5),
                     ("medsam2_z_margin_mm", -1), ("medsam2_cache_mb", 0),
                     ("medsam2_bf16", "yes"), ("medsam2_checkpoint", ""),
                     ("medsam2_scaling", "minmax")):
        with pytest.raises(ConfigError) as ei:
            M.MedSAM2Options.from_settings(Settings(weights_dir=tmp_path, options={key: bad}))
        # the flat (deprecated) key is read; the error names the nested key
        assert key.replace("medsam2_", "medsam2.") in str(ei.value) \
            and repr(bad) in str(ei.value)
        assert ei.value.exit_code == 78
    # the nested mapping, as --set writes it, and it wins over the flat alias
    o = M.MedSAM2Options.from_settings(Settings(weights_dir=tmp_path, options={
        "medsam2": {"window": (40.0, 400.0), "empty_stop": 4}, "medsam2_empty_stop": 9}))
    assert o.window == (40.0, 400.0) and o.empty_stop == 4
    with pytest.raises(ConfigError, match=r"'medsam2': unknown key\(s\) 'windw'"):
        M.MedSAM2Options.from_settings(Settings(weights_dir=tmp_path,
                                                options={"medsam2": {"windw": 1}}))


def test_device_selection_with_and_without_cuda() -> None:
    import torch

    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert M.select_device(Settings(device="auto")) == "cpu"
        assert M.select_device(Settings(device="cpu")) == "cpu"
        with pytest.raises(UnavailableError) as ei:
            M.select_device(Settings(device="cuda"))
        assert ei.value.exit_code == 69
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        assert M.select_device(Settings(device="auto")) == "cuda"
        assert M.select_device(Settings(device="cuda")) == "cuda"
        assert M.select_device(Settings(device="cpu")) == "cpu"


def test_autocast_choice() -> None:
    import contextlib
    import warnings

    import torch

    assert not M.use_bf16("cpu") and M.use_bf16("cuda") and not M.use_bf16("cuda", bf16=False)
    assert isinstance(M.autocast_context("cpu"), contextlib.nullcontext)
    assert isinstance(M.autocast_context("cuda", bf16=False), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on this machine
        ctx = M.autocast_context("cuda")
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert M.default_encoder_batch("cpu") == 1 and M.default_encoder_batch("cuda") > 1


def test_preprocessing_window_resize_normalize() -> None:
    hu = np.array([[-2000.0, -1350.0, -600.0, 150.0, 3000.0]], dtype=np.float32)
    u8 = M.window_uint8(hu, (-600.0, 1500.0))
    assert u8.dtype == np.uint8 and u8.tolist() == [[0, 0, 127, 255, 255]]
    sl = np.arange(256 * 256, dtype=np.uint32).reshape(256, 256).astype(np.uint8)
    assert M.resize_uint8(sl).shape == (512, 512)
    big = np.random.default_rng(0).integers(0, 256, (512, 512)).astype(np.uint8)
    assert np.array_equal(M.resize_uint8(big), big)  # identity at 512 px
    f = M.normalize_frames(np.full((2, 4, 4), 255, np.uint8))
    assert f.dtype == np.float32 and f.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(f[0, :, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                               (1 - 0.406) / 0.225], rtol=1e-6)
    src = M.FrameSource(np.full((5, 64, 64), -1000, np.float32), (-600.0, 1500.0))
    src.frames([1, 3])
    src.frames([3])
    assert src.preprocessed == 2  # only visited slices, each once


def test_study_minmax_scaling_is_medsam2s() -> None:
    """Clip to the window, then min-max over the clipped *study*: air at -1024 HU maps to 0
    (not -1350, the lung window's floor), as MedSAM2's CT script and MedSAM's pre_CT_MR.py."""
    hu = np.array([[[-1024.0, -600.0, -200.0, 150.0, 3000.0]]], dtype=np.float32)
    assert M.intensity_range(hu, M.DEFAULT_WINDOW) == (-1024.0, 150.0)
    assert M.intensity_range(hu, M.DEFAULT_WINDOW, "window") == (-1350.0, 150.0)
    u8 = M.scale_uint8(hu, M.DEFAULT_WINDOW, (-1024.0, 150.0))
    expect = [int((min(max(v, -1350), 150) + 1024) / 1174 * 255) for v in hu.ravel()]
    assert u8.ravel().tolist() == expect == [0, 92, 178, 255, 255]
    assert M.window_uint8(hu, M.DEFAULT_WINDOW).ravel().tolist() == [55, 127, 195, 255, 255]
    src = M.FrameSource(np.concatenate([hu + 100, hu]), M.DEFAULT_WINDOW)
    assert src.value_range == (-1024.0, 150.0)  # the whole study's, not slice 0's
    assert M.FrameSource(hu, M.DEFAULT_WINDOW, "window").value_range == (-1350.0, 150.0)
    assert not M.scale_uint8(np.full((2, 2), 5.0), M.DEFAULT_WINDOW, (5.0, 5.0)).any()
    with pytest.raises(ValueError, match="scaling"):
        M.intensity_range(hu, M.DEFAULT_WINDOW, "minmax")


def test_box_mapping_to_512() -> None:
    b = Box3D(z0=0, z1=3, y0=32, y1=65, x0=10, x1=21, key_slice=1)
    assert M.box_pixels(b).tolist() == [10.0, 32.0, 20.0, 64.0]  # inclusive last pixel
    np.testing.assert_allclose(M.box_to_model(b, height=128, width=256).numpy(),
                               [20.0, 128.0, 40.0, 256.0])


class _FakeEncoder:
    """forward_image stand-in: features that encode the frame's mean value."""

    def __init__(self) -> None:
        self.calls = 0

    def forward_image(self, x: Any) -> dict[str, Any]:
        import torch

        self.calls += x.shape[0]
        m = x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        fpn = [m.expand(-1, 4, 8, 8).clone(), m.expand(-1, 4, 4, 4).clone()]
        pos = [torch.zeros(x.shape[0], 4, 8, 8), torch.zeros(x.shape[0], 4, 4, 4)]
        return {"backbone_fpn": fpn, "vision_pos_enc": pos}


def test_feature_cache_is_shared_and_bounded() -> None:
    hu = np.stack([np.full((16, 16), v, np.float32) for v in np.linspace(-1000, 0, 6)])
    enc = _FakeEncoder()
    per_slice = (4 * 8 * 8 + 4 * 4 * 4) * 4
    cache = M.FeatureCache(enc, M.FrameSource(hu, (-600.0, 1500.0)), "cpu",
                           capacity_bytes=3 * per_slice, batch=2)
    cache.prefetch([0, 1, 2])
    assert enc.calls == 3 and cache.stats.encoder_batches == 2
    a, _ = cache.get(1)
    b, _ = cache.get(1)
    assert enc.calls == 3 and cache.stats.hits == 2 and a[0] is b[0]
    cache.get(3)  # evicts the least recently used (0)
    assert len(cache) == 3 and 0 not in cache and cache.stats.evictions == 1
    assert cache.bytes <= 3 * per_slice
    cache.get(0)
    assert enc.calls == 5 and cache.stats.encoder_calls == 5


def test_join_gives_each_lesion_its_own_mask_and_the_higher_logit_wins() -> None:
    shape = (3, 10, 10)
    boxes = [Box3D(0, 3, 0, 6, 0, 6, 1), Box3D(0, 3, 4, 10, 4, 10, 1)]
    a, b = M.LesionLogits(), M.LesionLogits()
    for z in range(3):
        la = np.full(shape[1:], -5.0, np.float32)
        la[0:6, 0:6] = 2.0
        la[9, 9] = 9.0  # a small far-away island of lesion a: not its largest component
        lb = np.full(shape[1:], -5.0, np.float32)
        lb[4:10, 4:10] = 1.0
        lb[4:6, 4:6] = 3.0  # b wins the 2x2 overlap
        a.add(z, la)
        b.add(z, lb)
    a.add(1, np.full(shape[1:], -1.0, np.float32))  # the other direction: union keeps max
    out = M.MedSAM2Segmenter._join([a, b], boxes, shape)
    ma, mb = out[0].full(), out[1].full()
    assert not (ma & mb).any()
    assert ma[:, 4:6, 4:6].sum() == 0 and mb[:, 4:6, 4:6].all()
    assert ma[:, 0:4, 0:6].all() and not ma[:, 9, 9].any()  # largest component only
    assert out[0].box is boxes[0] and out[1].box is boxes[1]
    assert out[0].voxel_count == 3 * (36 - 4) and out[1].voxel_count == 3 * 36 - 1 * 3


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    s = Settings(device="cpu", weights_dir=tmp_path)
    with pytest.raises(UnavailableError, match="autoseg weights add"):
        M.resolve_checkpoint(s, M.MedSAM2Options.from_settings(s))
    s = Settings(device="cpu", weights_dir=tmp_path,
                 options={"medsam2_checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(UnavailableError, match="nope.pt"):
        M.resolve_checkpoint(s, M.MedSAM2Options.from_settings(s))


# --------------------------------------------------------------------------- with the model

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def ckpt(medsam2_checkpoint: Path) -> Path:
    """The session's seeded random checkpoint in MedSAM2's format (tests/conftest.py)."""
    return medsam2_checkpoint


@pytest.fixture(scope="session")
def reference_predictor(ckpt: Path) -> Any:
    from medsam2_reference import stock_predictor

    return stock_predictor(ckpt)


def _study(nz: int, size: int, n: int, seed: int) -> tuple[Volume, list[Box3D]]:
    """A small seeded chest-like phantom: body, two lungs, ``n`` spherical nodules."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(size), np.arange(size), indexing="ij",
                          sparse=True)
    c = size / 2
    hu = np.full((nz, size, size), -1000.0, np.float32)
    hu[np.broadcast_to(((y - c) / (0.42 * size)) ** 2 + ((x - c) / (0.46 * size)) ** 2 <= 1,
                       hu.shape)] = 40.0
    for side in (-1, 1):
        lung = ((y - c) / (0.3 * size)) ** 2 + ((x - c - side * 0.22 * size) / (0.17 * size)) ** 2
        hu[np.broadcast_to(lung <= 1, hu.shape)] = -850.0
    boxes = []
    r = max(3, size // 24)
    for i in range(n):
        side = -1 if i % 2 == 0 else 1
        cz = nz // 2 + (i - (n - 1) / 2) * 2
        cy = c + (i - (n - 1) / 2) * size * 0.15
        cx = c + side * 0.22 * size
        ball = (z - cz) ** 2 * 4 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        hu[ball] = 30.0
        zz, yy, xx = np.nonzero(ball)
        key = int(round(cz))
        boxes.append(Box3D(int(zz.min()), int(zz.max()) + 1, int(yy.min()), int(yy.max()) + 1,
                           int(xx.min()), int(xx.max()) + 1, key, source="test"))
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    hu = np.round(hu)  # whole HU, as CT is stored (the reference reads them as int16)
    vol = Volume(array=hu, spacing=(2.5, 1.5, 1.5), origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, boxes


def _segmenter(ckpt: Path, tmp_path: Path, **opts: Any) -> Any:
    return M.create(Settings(device="cpu", threads=2, weights_dir=tmp_path,
                             options={"medsam2_checkpoint": str(ckpt), **opts}))


def test_create_loads_strictly_and_reports_untrained(ckpt: Path, tmp_path: Path) -> None:
    from autoprompt_seg.weights import add_weights, sha256_file

    add_weights(ckpt, "MedSAM2_latest", tmp_path)  # the weights-folder route
    seg = M.create(Settings(device="cpu", weights_dir=tmp_path))
    info = seg.info()
    assert info.name == "medsam2" and info.kind == "segmenter"
    assert info.checkpoint == "MedSAM2_latest"
    assert info.checkpoint_sha256 == sha256_file(ckpt)
    assert info.trained is False
    assert "untrained test checkpoint" in json.dumps(info.to_dict())
    assert info.details["config"] == "sam2.1_hiera_t512.yaml"
    assert info.details["device"] == "cpu" and info.details["precision"] == "float32"
    assert info.details["provenance_state"] == "untrained test checkpoint"
    assert info.details["scaling"] == "study-minmax"


def test_known_sha256_is_reported_as_trained(ckpt: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from autoprompt_seg.weights import load_manifest, sha256_file

    m = load_manifest()
    m["MedSAM2_CTLesion"] = replace(m["MedSAM2_CTLesion"], sha256=sha256_file(ckpt))
    s = Settings(device="cpu", weights_dir=tmp_path, options={"medsam2_checkpoint": str(ckpt)})
    with mock.patch("autoprompt_seg.weights.load_manifest", return_value=m):
        c = M.resolve_checkpoint(s, M.MedSAM2Options.from_settings(s))
    assert c.trained and c.name == "MedSAM2_CTLesion" and c.state == "pinned release"


def test_equivalence_with_the_reference_single_lesion(ckpt: Path, tmp_path: Path,
                                                      reference_predictor: Any) -> None:
    """Same checkpoint, same box: the fast path visiting the whole volume gives exactly the
    reference's mask, with one encoder call per slice instead of one per slice per
    direction."""
    from medsam2_reference import as_read_by_the_script, reference_segment

    vol, boxes = _study(nz=6, size=128, n=1, seed=3)
    seg = _segmenter(ckpt, tmp_path, medsam2_z_margin_mm=100.0, medsam2_empty_stop=99)
    fast = seg.segment(vol, boxes)
    ref = reference_segment(reference_predictor, as_read_by_the_script(vol.array), boxes,
                            M.DEFAULT_WINDOW)
    assert seg.last_logits[0].visited == set(range(vol.shape[0]))
    union = np.zeros(vol.shape, bool)
    for z, ((y0, y1, x0, x1), lg) in seg.last_logits[0].slices.items():
        union[z, y0:y1, x0:x1] = lg > 0
        np.testing.assert_allclose(lg, ref.logits[0][z, y0:y1, x0:x1], rtol=0, atol=1e-5)
    assert np.array_equal(union, ref.unions[0])
    assert 0 < ref.unions[0].sum() < ref.unions[0].size  # a non-trivial mask to compare
    assert np.array_equal(fast[0].full(), ref.masks[0])
    assert seg.last_stats.encoder_calls == vol.shape[0]
    assert ref.encoder_calls > vol.shape[0]


@pytest.mark.slow
def test_equivalence_with_the_reference_two_lesions_and_early_stop(
        ckpt: Path, tmp_path: Path, reference_predictor: Any) -> None:
    """Two lesions with a tight z margin: wherever the fast path visits, its logits are the
    reference's; each slice is encoded once for both lesions and both directions; each
    lesion keeps its own mask, and shared voxels go to the higher logit."""
    from medsam2_reference import as_read_by_the_script, reference_segment

    vol, boxes = _study(nz=10, size=128, n=2, seed=5)
    seg = _segmenter(ckpt, tmp_path, medsam2_z_margin_mm=0.0)
    fast = seg.segment(vol, boxes)
    ref = reference_segment(reference_predictor, as_read_by_the_script(vol.array), boxes,
                            M.DEFAULT_WINDOW)
    visited_all: set[int] = set()
    for i, les in enumerate(seg.last_logits):
        b = boxes[i]
        plan = set(range(max(0, b.z0 - 2), min(vol.shape[0], b.z1 + 2)))
        assert b.key_slice in les.visited and les.visited <= plan  # margin 2 (or early stop)
        assert les.visited == set(range(min(les.visited), max(les.visited) + 1))
        visited_all |= les.visited
        for z in les.visited:
            full = np.full(vol.shape[1:], -np.inf, np.float32)
            if z in les.slices:
                (y0, y1, x0, x1), lg = les.slices[z]
                full[y0:y1, x0:x1] = lg
            pos = ref.logits[i][z] > 0
            assert np.array_equal(full > 0, pos), (i, z)
            np.testing.assert_allclose(full[pos], ref.logits[i][z][pos], rtol=0, atol=1e-5)
    assert seg.last_stats.encoder_calls == len(visited_all) < ref.encoder_calls
    ma, mb = fast[0].full(), fast[1].full()
    assert not (ma & mb).any() and (ma | mb).any()
    both_visited = np.zeros(vol.shape, bool)  # slices that the fast path tracked for both
    both_visited[sorted(seg.last_logits[0].visited & seg.last_logits[1].visited)] = True
    won_a = ma & (ref.logits[1] > 0) & both_visited
    tol = 2e-5  # both logits agree with ours within 1e-5 (above): near-ties may go either way
    assert (ref.logits[0][won_a] >= ref.logits[1][won_a] - tol).all()
    won_b = mb & (ref.logits[0] > 0) & both_visited
    assert (ref.logits[1][won_b] >= ref.logits[0][won_b] - tol).all()


@pytest.mark.slow
def test_equivalence_on_a_real_study_with_default_settings(
        ckpt: Path, tmp_path: Path, reference_predictor: Any, pycerr_root: Path) -> None:
    """Issue 12: on real CT (pycerr pat_2, whose minimum is -1000 HU, above the lung
    window's floor of -1350), the default settings give MedSAM2's own preprocessing: the uint8 study equals
    the published script's, and with early stopping off the masks are identical and the
    logits agree within 1e-4. (The study is cut to the tumour's slices +/- 3, the same cut
    on both sides, to keep the reference's run short.)"""
    from dataclasses import replace

    from autoprompt_seg.detect.oracle import create as oracle
    from autoprompt_seg.io.dicom import load_study
    from medsam2_reference import as_read_by_the_script, reference_segment

    study = pycerr_root / "pat_2"
    full, _ = load_study(study)
    (b,) = oracle(Settings(options={"prompts_from": str(study), "roi_name": "GTV-1"})
                  ).detect(full)
    z0, z1 = max(0, b.z0 - 3), min(full.shape[0], b.z1 + 3)
    vol = Volume(array=np.ascontiguousarray(full.array[z0:z1]), spacing=full.spacing,
                 origin=(0.0, 0.0, 0.0), direction=np.eye(3), source_format="synthetic")
    box = replace(b, z0=b.z0 - z0, z1=b.z1 - z0, key_slice=b.key_slice - z0)
    lo = float(vol.array.min())
    assert lo > M.DEFAULT_WINDOW[0] - M.DEFAULT_WINDOW[1] / 2  # -1000 > -1350
    seg = _segmenter(ckpt, tmp_path, medsam2_z_margin_mm=1e4, medsam2_empty_stop=10**6)
    assert seg.options.scaling == "study-minmax" and seg.options.window == M.DEFAULT_WINDOW
    fast = seg.segment(vol, [box])
    ref = reference_segment(reference_predictor, as_read_by_the_script(vol.array), [box],
                            M.DEFAULT_WINDOW)
    assert seg.info().details["scaling_range_hu"] == [lo, 150.0]
    ours_u8 = M.scale_uint8(vol.array, M.DEFAULT_WINDOW, seg.last_value_range or (0, 0))
    assert np.array_equal(ours_u8, ref.frames_u8)
    # the old default (nominal window) is not MedSAM2's: the test would have caught it
    assert not np.array_equal(M.window_uint8(vol.array, M.DEFAULT_WINDOW), ref.frames_u8)
    les = seg.last_logits[0]
    assert les.visited == set(range(vol.shape[0]))  # early stopping off: every slice
    union = np.zeros(vol.shape, bool)
    worst = 0.0
    for z in range(vol.shape[0]):
        lg = np.full(vol.shape[1:], -np.inf, np.float32)
        if z in les.slices:
            (y0, y1, x0, x1), crop = les.slices[z]
            lg[y0:y1, x0:x1] = crop
            union[z] = lg > 0
        pos = (lg > 0) | (ref.logits[0][z] > 0)
        if pos.any():
            worst = max(worst, float(np.abs(lg[pos] - ref.logits[0][z][pos]).max()))
    assert worst <= 1e-4, worst
    assert np.array_equal(union, ref.unions[0])
    assert 0 < ref.unions[0].sum()
    assert np.array_equal(fast[0].full(), ref.masks[0])


#: The registry entry proposed for the lead (used here until registry.py has it).
MEDSAM2_SPEC = dict(
    name="medsam2", kind="segmenter",
    summary="MedSAM2 (sam2.1 Hiera-tiny, 512 px): the box prompts the key slice, the mask is "
            "tracked forward and backward through the slices",
    factory=".models.medsam2:create", requires=("torch", "sam2"),
    weights=("MedSAM2_latest",))


@pytest.mark.slow
def test_predict_end_to_end_on_a_real_study(ckpt: Path, tmp_path: Path, pycerr_root: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """pycerr pat_2 (41 slices of 138x141, real lung tumour with RTSTRUCT): oracle prompts
    from the RTSTRUCT -> medsam2 on the CPU -> a valid SEG and an honest report."""
    import pydicom

    from autoprompt_seg import registry
    from autoprompt_seg.predict import predict_path

    if "medsam2" not in registry.names("segmenter"):
        monkeypatch.setattr(registry, "BACKENDS",
                            registry.BACKENDS + (registry.BackendSpec(**MEDSAM2_SPEC),))

    study = pycerr_root / "pat_2"
    rt = next(p for p in study.rglob("*") if p.is_file()
              and pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    settings = Settings(device="cpu", threads=2, weights_dir=tmp_path,
                        options={"medsam2_checkpoint": str(ckpt), "prompts_from": str(rt),
                                 "roi_name": "GTV-1"})
    res = predict_path(study, tmp_path / "out", detector="oracle", segmenter="medsam2",
                       settings=settings)
    report = json.loads(res.outputs["report"].read_text())
    text = json.dumps(report)
    assert "untrained test checkpoint" in text
    assert res.prediction.segmenter.checkpoint_sha256 in text
    assert res.prediction.segmenter.trained is False
    if res.prediction.lesions:
        seg = pydicom.dcmread(res.outputs["seg"])
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "medsam2"
        assert "untrained test checkpoint" in str(algo.get("AlgorithmParameters", ""))
