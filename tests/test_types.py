"""The typed seams validate on creation and name the bad argument and value."""

from __future__ import annotations

import numpy as np
import pytest

from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Prediction, Volume


def _vol(shape=(4, 8, 8), **kw) -> Volume:
    args = dict(array=np.zeros(shape, np.float32), spacing=(2.0, 0.5, 0.5),
                origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    args.update(kw)
    return Volume(**args)


def test_volume_rejects_bad_values():
    with pytest.raises(ValueError, match="'array'.*float32"):
        _vol(array=np.zeros((4, 8, 8), np.int16))
    with pytest.raises(ValueError, match="'array'.*3-D"):
        _vol(array=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="'spacing'.*got \\(2.0, 0.0, 0.5\\)"):
        _vol(spacing=(2.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="'direction'.*orthonormal"):
        _vol(direction=np.diag([1.0, 2.0, 1.0]))


def test_volume_affine_maps_indices_to_lps():
    d = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])  # swapped rows/cols, reversed normal
    v = _vol(direction=d, origin=(10.0, 20.0, 30.0))
    # voxel (z=1, y=2, x=3): x axis -> +y LPS, y axis -> +x LPS, z axis -> -z LPS
    assert v.index_to_lps(1, 2, 3) == pytest.approx((10 + 2 * 0.5, 20 + 3 * 0.5, 30 - 2.0))
    assert v.voxel_volume_ml == pytest.approx(2 * 0.5 * 0.5 / 1000)


def test_box_validation_names_argument():
    Box3D(0, 2, 0, 3, 0, 4, key_slice=1)
    with pytest.raises(ValueError, match="'z1'.*greater than z0"):
        Box3D(2, 2, 0, 3, 0, 4, key_slice=2)
    with pytest.raises(ValueError, match="'key_slice'.*\\[0, 2\\).*got 5"):
        Box3D(0, 2, 0, 3, 0, 4, key_slice=5)
    with pytest.raises(ValueError, match="'x0'.*integer"):
        Box3D(0, 2, 0, 3, 0.5, 4, key_slice=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'y0'.*>= 0"):
        Box3D(0, 2, -1, 3, 0, 4, key_slice=1)


def test_lesion_mask_crop_roundtrip_and_label_map_never_overwrites():
    full = np.zeros((4, 8, 8), bool)
    full[1:3, 2:5, 3:6] = True
    box = Box3D(1, 3, 2, 5, 3, 6, key_slice=1)
    m = LesionMask.from_full(full, box)
    assert m.offset == (1, 2, 3) and m.mask.shape == (2, 3, 3)
    assert np.array_equal(m.full(), full)
    other = np.zeros_like(full)
    other[2:4, 4:7, 5:8] = True  # overlaps the first lesion at (2, 4, 5)
    m2 = LesionMask.from_full(other, Box3D(2, 4, 4, 7, 5, 8, key_slice=2))
    info = BackendInfo(name="t", kind="detector", version="0")
    pred = Prediction(volume=_vol(), lesions=(m, m2), detector=info,
                      segmenter=BackendInfo(name="t", kind="segmenter", version="0"))
    lab = pred.label_map()
    assert lab[2, 4, 5] == 1 and lab[3, 6, 7] == 2
    assert (lab == 1).sum() == full.sum()
    with pytest.raises(ValueError, match="lesions\\[0\\]"):
        Prediction(volume=_vol(shape=(5, 8, 8)), lesions=(m,), detector=info,
                   segmenter=BackendInfo(name="t", kind="segmenter", version="0"))


def test_lesion_mask_must_fit_volume():
    box = Box3D(0, 1, 0, 1, 0, 1, key_slice=0)
    with pytest.raises(ValueError, match="'mask'.*fit inside"):
        LesionMask(np.ones((2, 2, 2), bool), (3, 0, 0), (4, 4, 4), box)


def test_label_map_widens_beyond_255_lesions_and_union_mask_covers_all():
    """An untrained prompt-free model can give hundreds of specks: no uint8 overflow."""
    vol = Volume(array=np.zeros((2, 20, 20), np.float32), spacing=(1.0, 1.0, 1.0),
                 origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    lesions = []
    for i in range(300):
        z, y, x = i // 200, (i % 200) // 20 * 2, i % 20
        box = Box3D(z0=z, z1=z + 1, y0=y, y1=y + 1, x0=x, x1=x + 1, key_slice=z)
        lesions.append(LesionMask(np.ones((1, 1, 1), bool), (z, y, x), vol.shape, box))
    info = BackendInfo(name="t", kind="segmenter", version="0")
    pred = Prediction(volume=vol, lesions=tuple(lesions), detector=info, segmenter=info)
    lab = pred.label_map()
    assert lab.dtype == np.uint16 and lab.max() == 300 and np.count_nonzero(lab) == 300
    assert np.array_equal(pred.union_mask(), lab > 0)
