"""GT prompt protocols and their seeded jitter."""

from __future__ import annotations

import numpy as np
import pytest

from autoprompt_seg.bench.prompts import case_seed, fill_slice_boxes, gt_prompts
from autoprompt_seg.datasets.jitter import Jitter
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.types import Box3D


def two_lesions() -> np.ndarray:
    m = np.zeros((30, 64, 64), bool)
    m[3:12, 10:20, 10:24] = True     # 9 slices
    m[18:23, 40:50, 40:46] = True    # 5 slices
    return m


def test_key_slice_without_jitter_is_the_tight_box() -> None:
    p = gt_prompts(two_lesions(), "key-slice")
    assert len(p) == 2
    b = p[0].key_box
    assert (b.z0, b.z1, b.y0, b.y1, b.x0, b.x1) == (3, 12, 10, 20, 10, 24)
    assert b.from_person and p[0].slice_boxes == ()


@pytest.mark.parametrize("protocol,k,counts", [("every-slice", 2, [9, 5]),
                                               ("every-k", 2, [5, 3]),
                                               ("every-k", 3, [3, 1])])  # anchored at key slices 7 and 20
def test_multi_box_protocols_count(protocol: str, k: int, counts: list[int]) -> None:
    p = gt_prompts(two_lesions(), protocol, k=k)
    assert [len(x.slice_boxes) for x in p] == counts
    for lp in p:
        assert lp.key_box.key_slice in [b.z0 for b in lp.slice_boxes]
        assert all(b.z1 == b.z0 + 1 for b in lp.slice_boxes)


def test_jitter_is_seeded_bounded_and_changes_boxes() -> None:
    m = two_lesions()
    jit = Jitter(shift=0.2, scale=0.2)
    a = gt_prompts(m, "key-slice", jitter=jit, seed=5)
    b = gt_prompts(m, "key-slice", jitter=jit, seed=5)
    c = gt_prompts(m, "key-slice", jitter=jit, seed=6)
    assert [x.key_box for x in a] == [x.key_box for x in b]
    assert [x.key_box for x in a] != [x.key_box for x in c]
    box = a[0].key_box
    # size 10 (y): centre moves <= 2 voxels, size within [8, 12] before outward rounding
    assert abs((box.y0 + box.y1) / 2 - 15) <= 2 + 1
    assert 8 <= box.y1 - box.y0 <= 13
    assert (box.z0, box.z1) == (3, 12)


def test_bad_protocol_and_jitter_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="prompt-protocol.*'bogus'"):
        gt_prompts(two_lesions(), "bogus")
    with pytest.raises(ConfigError, match="jitter_shift.*1.5"):
        Jitter(shift=1.5)
    assert case_seed(0, "a") != case_seed(0, "b") and case_seed(1, "a") == case_seed(1, "a")


def _b(z: int, y0: int, y1: int, x0: int, x1: int) -> Box3D:
    return Box3D(z0=z, z1=z + 1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=z, source="gt:every-k",
                 from_person=True)


def test_fill_slice_boxes_interpolates_linearly_between_drawn_slices() -> None:
    a, b, c = _b(2, 10, 20, 30, 40), _b(6, 14, 28, 30, 41), _b(8, 14, 28, 30, 41)
    out = fill_slice_boxes([c, a, b])  # any order in, sorted by slice out
    assert [x.z0 for x in out] == [2, 3, 4, 5, 6, 7, 8]
    assert out[0] is a and out[4] is b and out[6] is c  # drawn boxes unchanged
    # z=3: t=1/4 -> y0 10+1=11, y1 20+2=22, x1 40.25 -> 40; z=4: t=1/2 -> x1 40.5 rounds up
    assert [(x.y0, x.y1, x.x0, x.x1) for x in out[1:4]] == [(11, 22, 30, 40), (12, 24, 30, 41),
                                                            (13, 26, 30, 41)]
    assert (out[5].y0, out[5].y1, out[5].x1) == (14, 28, 41)  # between two equal boxes
    for x in out[1:4]:
        assert x.key_slice == x.z0 and x.z1 == x.z0 + 1 and x.from_person
        assert x.source == "gt:every-k+interpolated"
    assert fill_slice_boxes([]) == [] and fill_slice_boxes([a]) == [a]


def test_fill_slice_boxes_keeps_thin_boxes_at_least_one_voxel_and_refuses_3d() -> None:
    out = fill_slice_boxes([_b(0, 5, 6, 5, 6), _b(3, 7, 8, 9, 10)])
    assert all(x.y1 - x.y0 >= 1 and x.x1 - x.x0 >= 1 for x in out)
    with pytest.raises(ValueError, match="2-D boxes"):
        fill_slice_boxes([Box3D(z0=0, z1=3, y0=0, y1=2, x0=0, x1=2, key_slice=1)])
    with pytest.raises(ValueError, match="slice 4"):
        fill_slice_boxes([_b(4, 0, 2, 0, 2), _b(4, 1, 3, 1, 3)])


def test_every_k_filled_covers_the_drawn_range_of_each_lesion() -> None:
    for lp in gt_prompts(two_lesions(), "every-k", k=3):
        drawn = sorted(b.z0 for b in lp.slice_boxes)
        filled = fill_slice_boxes(lp.slice_boxes)
        assert [b.z0 for b in filled] == list(range(drawn[0], drawn[-1] + 1))
