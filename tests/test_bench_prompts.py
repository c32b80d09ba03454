"""GT prompt protocols and their seeded jitter."""

from __future__ import annotations

import numpy as np
import pytest

from autoprompt_seg.bench.prompts import Jitter, case_seed, gt_prompts
from autoprompt_seg.errors import ConfigError


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
