"""The training-free box-prompted classical segmenter on seeded synthetic data and a real CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.config import Settings
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.segment.classical import ClassicalParams, ClassicalSegmenter, create
from autoprompt_seg.types import Box3D, Volume

SPACING = (2.5, 1.0, 1.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def lung_with_spheres(centres_mm, radius_mm: float = 10.0, seed: int = 0,
                      wall: bool = False) -> tuple[Volume, list[np.ndarray]]:
    """A -850 HU lung block inside a +40 HU body shell, with +40 HU spheres and a vessel
    (tube of radius 2 mm along x). ``wall`` adds a +40 HU chest wall slab at y < 20 mm."""
    rng = np.random.default_rng(seed)
    shape = (40, 100, 100)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, SPACING, strict=False)],
                          indexing="ij")
    arr = np.full(shape, 40.0, dtype=np.float32)
    lung = (y > 8) & (y < 92) & (x > 8) & (x < 92) & (z > 5) & (z < 95)
    arr[lung] = -850.0
    if wall:
        arr[y < 20] = 40.0
    masks = []
    for c in centres_mm:
        m = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm ** 2
        arr[m] = 40.0
        masks.append(m)
    arr[lung & ((z - 50) ** 2 + (y - 75) ** 2 <= 2.0 ** 2)] = 40.0
    arr += rng.normal(0, 15, shape).astype(np.float32)
    vol = Volume(array=arr.astype(np.float32), spacing=SPACING, origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3), source_format="synthetic")
    return vol, masks


def box_of(mask: np.ndarray, score: float = 1.0) -> Box3D:
    nz = np.nonzero(mask)
    area = mask.sum(axis=(1, 2))
    return Box3D(z0=int(nz[0].min()), z1=int(nz[0].max()) + 1, y0=int(nz[1].min()),
                 y1=int(nz[1].max()) + 1, x0=int(nz[2].min()), x1=int(nz[2].max()) + 1,
                 key_slice=int(area.argmax()), score=score, source="test")


def test_info_and_options() -> None:
    seg = create(Settings(options={"classical": {"grow_mm": 3.0}}))
    assert seg.info().name == "classical" and seg.info().kind == "segmenter"
    assert seg.params.grow_mm == 3.0
    with pytest.raises(ConfigError, match="lower_min_hu"):
        ClassicalParams(lower_min_hu=0.0, lower_max_hu=-100.0)
    with pytest.raises(ConfigError, match="nope"):
        create(Settings(options={"classical": {"nope": 1}}))
    with pytest.raises(ConfigError, match="fat_lo_hu.*-20.0 > -30.0"):
        ClassicalParams(fat_lo_hu=-20.0)
    with pytest.raises(ConfigError, match="fat_lung_mm"):
        ClassicalParams(fat_lung_mm=-1.0)


def test_sphere_dice_and_progress() -> None:
    vol, (m,) = lung_with_spheres([(50.0, 50.0, 50.0)])
    calls: list[tuple[int, int]] = []
    (les,) = ClassicalSegmenter().segment(vol, [box_of(m)],
                                          progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 1)]
    assert _dice(les.full(), m) >= 0.85
    # the vessel at y = 75 mm is not part of it
    assert not les.full()[:, 70:, :].any()


def test_juxtapleural_sphere_does_not_leak_into_wall() -> None:
    vol, (m,) = lung_with_spheres([(50.0, 28.0, 50.0)], wall=True)
    (les,) = ClassicalSegmenter().segment(vol, [box_of(m)])
    full = les.full()
    assert _dice(full, m) >= 0.75
    assert full[:, :15, :].sum() < 0.05 * m.sum()


def test_fat_plane_keeps_a_loose_box_out_of_the_mediastinum() -> None:
    """A tumour on a fat-lined mediastinum (a +40 HU block at x < 35 mm behind a -100 HU
    fat plane); a loose automatic box reaches into the block. With the fat rule the mask
    stays on the tumour's side of the plane; without it, it leaks into the block."""
    vol, (m,) = lung_with_spheres([(50.0, 50.0, 47.0)])
    x = (np.arange(vol.shape[2]) + 0.5) * SPACING[2]
    lung = vol.array < -400
    vol.array[lung & (x < 35)] = 40.0
    vol.array[lung & (x >= 35) & (x < 39)] = -100.0
    med = np.broadcast_to(x < 35, vol.shape)
    b = box_of(m)
    loose = Box3D(z0=b.z0 - 2, z1=b.z1 + 2, y0=b.y0 - 8, y1=b.y1 + 8, x0=b.x0 - 8,
                  x1=b.x1 + 8, key_slice=b.key_slice, score=1.0, source="test")
    (les,) = ClassicalSegmenter().segment(vol, [loose])
    assert not (les.full() & med).any()
    assert _dice(les.full(), m) >= 0.7
    (off,) = ClassicalSegmenter(ClassicalParams(fat_hi_hu=-150.0)).segment(vol, [loose])
    assert (off.full() & med).sum() > 0.3 * m.sum()


def _cavitated_on_mediastinum(inner_hu: float) -> tuple[Volume, np.ndarray, Box3D]:
    """A 12 mm tumour with a 3 mm wall around ``inner_hu`` (gas: a cavity), pressed on a
    fat-lined mediastinum (x < 35 mm), and a loose box that reaches into the mediastinum."""
    vol, (m,) = lung_with_spheres([(50.0, 50.0, 50.0)], radius_mm=12.0)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(vol.shape, SPACING,
                                                                     strict=True)],
                          indexing="ij")
    lung = vol.array < -400
    vol.array[lung & (x < 35)] = 40.0
    vol.array[lung & (x >= 35) & (x < 37)] = -100.0
    inner = (z - 50) ** 2 + (y - 50) ** 2 + (x - 50) ** 2 <= 9.0 ** 2
    vol.array[inner] = inner_hu + np.random.default_rng(1).normal(0, 15, int(inner.sum()))
    b = box_of(m)
    loose = Box3D(z0=b.z0 - 1, z1=b.z1 + 1, y0=b.y0 - 8, y1=b.y1 + 8, x0=b.x0 - 8,
                  x1=b.x1 + 8, key_slice=b.key_slice, score=1.0, source="test")
    return vol, m, loose


def test_cavitating_tumour_keeps_its_cavity() -> None:
    """The opening cuts a thin cavity wall away; without the cavity rule the mask jumps to
    the mediastinum beside it. The gas belongs to the lesion (as in a GTV)."""
    vol, m, loose = _cavitated_on_mediastinum(-1000.0)
    (les,) = ClassicalSegmenter().segment(vol, [loose])
    assert _dice(les.full(), m) >= 0.8
    (off,) = ClassicalSegmenter(ClassicalParams(cavity_max_hu=-2000.0)).segment(vol, [loose])
    assert _dice(off.full(), m) < 0.6


def test_aerated_lung_in_a_ring_is_no_cavity() -> None:
    """A ring of tissue around aerated lung (-850 HU, denser than gas) is not filled."""
    vol, _, loose = _cavitated_on_mediastinum(-850.0)
    (les,) = ClassicalSegmenter().segment(vol, [loose])
    (off,) = ClassicalSegmenter(ClassicalParams(cavity_max_hu=-2000.0)).segment(vol, [loose])
    assert np.array_equal(les.full(), off.full())


def test_two_lesions_are_disjoint_and_ordered() -> None:
    vol, (m1, m2) = lung_with_spheres([(50.0, 35.0, 35.0), (50.0, 35.0, 62.0)])
    boxes = [box_of(m1, 0.9), box_of(m2, 0.8)]
    les = ClassicalSegmenter().segment(vol, boxes)
    assert [x.box for x in les] == boxes
    a, b = les[0].full(), les[1].full()
    assert not (a & b).any()
    assert _dice(a, m1) >= 0.8 and _dice(b, m2) >= 0.8


def test_box_in_empty_lung_gives_empty_mask() -> None:
    vol, _ = lung_with_spheres([])
    (les,) = ClassicalSegmenter().segment(vol, [Box3D(z0=15, z1=20, y0=30, y1=40, x0=30,
                                                      x1=40, key_slice=17)])
    assert les.is_empty


def test_box_outside_volume_is_rejected() -> None:
    vol, _ = lung_with_spheres([])
    with pytest.raises(ValueError, match="boxes\\[0\\]"):
        ClassicalSegmenter().segment(vol, [Box3D(z0=0, z1=50, y0=0, y1=5, x0=0, x1=5,
                                                 key_slice=1)])


def test_real_pat4_oracle_box(pat4_dir: Path) -> None:
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.io.rtstruct import find_rtstruct, load_roi_mask

    vol, _ = load_study(pat4_dir)
    rs = find_rtstruct(pat4_dir)
    assert rs is not None
    gt = load_roi_mask(rs, vol)
    (les,) = ClassicalSegmenter().segment(vol, [box_of(gt)])
    assert _dice(les.full(), gt) >= 0.8
