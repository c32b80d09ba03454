"""Training data: patient-level splits, K-shot subsets, loading, slice sampling with
tumour-positive oversampling, windowing, resizing and augmentation."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from autoprompt_seg.datasets import Case, make_splits
from autoprompt_seg.errors import ConfigError, InputError
from autoprompt_seg.train.data import (
    AugmentConfig,
    SliceSampler,
    TrainingVolume,
    augment_batch,
    kshot_subsets,
    load_training_set,
    make_batch,
    resize_images,
    resize_masks,
    window_ct,
)
from autoprompt_seg.types import Volume

torch = pytest.importorskip("torch")


def _case(case_id: str, patient: str, shape=(6, 16, 16), tumour_slices=(2, 3),
          empty: bool = False) -> Case:
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    hu = rng.normal(-700, 50, size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    if not empty:
        for z in tumour_slices:
            mask[z, 5:9, 6:10] = True
    vol = Volume(array=hu, spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), direction=np.eye(3),
                 source_format="synthetic")
    return Case(case_id, patient, lambda: vol, lambda v: mask, source=f"mem:{case_id}")


def _cohort(n_patients: int = 12, scans_per_patient: int = 2) -> list[Case]:
    return [_case(f"P{p:02d}__s{s}", f"P{p:02d}") for p in range(n_patients)
            for s in range(scans_per_patient)]


# --------------------------------------------------------------------------- splits, K-shot


def test_patient_level_splits_never_leak_a_patient():
    cases = _cohort(13, 3)
    pid = {c.case_id: c.patient_id for c in cases}
    for seed in range(5):
        sp = make_splits(cases, seed=seed)
        patient_sets = [set(sp["patients"][n]) for n in ("train", "val", "test")]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not patient_sets[i] & patient_sets[j]
        case_sets = [set(sp["cases"][n]) for n in ("train", "val", "test")]
        assert set().union(*case_sets) == {c.case_id for c in cases}
        assert sum(map(len, case_sets)) == len(cases)
        for name, cs in sp["cases"].items():  # every case sits with its patient
            assert {pid[c] for c in cs} == set(sp["patients"][name])


def test_kshot_subsets_are_nested_seeded_and_by_patient():
    cases = _cohort(12, 2)
    a = kshot_subsets(cases, [1, 5, 10], seed=3)
    b = kshot_subsets(cases, [10, 5, 1], seed=3)
    ids = {k: [c.case_id for c in v] for k, v in a.items()}
    assert ids == {k: [c.case_id for c in v] for k, v in b.items()}  # seeded, order-free
    for k in (1, 5, 10):
        patients = {c.patient_id for c in a[k]}
        assert len(patients) == k
        assert len(a[k]) == 2 * k  # both scans of each chosen patient
    assert set(ids[1]) <= set(ids[5]) <= set(ids[10])
    others = {tuple(c.case_id for c in kshot_subsets(cases, [5], seed=s)[5]) for s in range(6)}
    assert len(others) > 1  # the seed matters
    order = [c.case_id for c in cases]
    assert ids[5] == [c for c in order if c in set(ids[5])]  # input order kept


def test_kshot_rejects_k_above_patient_count_and_bad_k():
    cases = _cohort(3, 2)
    with pytest.raises(ConfigError, match="K=4 exceeds the 3 patient"):
        kshot_subsets(cases, [1, 4], seed=0)
    with pytest.raises(ConfigError, match="positive integers"):
        kshot_subsets(cases, [0], seed=0)


# --------------------------------------------------------------------------- loading


def test_load_training_set_skips_bad_cases_and_fails_when_none_left(caplog):
    good, bad = _case("good", "A"), _case("bad", "B", empty=True)
    vols = load_training_set([good, bad], hu_dtype=np.int16)
    assert [v.case_id for v in vols] == ["good"]
    assert vols[0].hu.dtype == np.int16 and vols[0].mask.dtype == np.bool_
    assert list(vols[0].positive_slices) == [2, 3]
    assert "bad" in caplog.text
    with pytest.raises(InputError, match="no usable training case"):
        load_training_set([bad])


# --------------------------------------------------------------------------- sampling


def _volume(n_slices: int, positive: list[int]) -> TrainingVolume:
    mask = np.zeros((n_slices, 4, 4), bool)
    mask[positive, 1, 1] = True
    return TrainingVolume("v", "p", np.zeros(mask.shape, np.float32), mask, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.9])
def test_oversampling_gives_the_intended_positive_ratio(fraction):
    # 3 positive slices among 60: without oversampling only 5 % of draws would hold tumour
    vols = [_volume(40, [10, 11]), _volume(20, [5])]
    s = SliceSampler(vols, pos_fraction=fraction, seed=1)
    n = 20000
    draws = s.sample(n, epoch=0)
    positive = np.array([vols[v].mask[z].any() for v, z in draws])
    sigma = np.sqrt(fraction * (1 - fraction) / n)
    assert abs(positive.mean() - fraction) < 4 * sigma
    # every positive slice comes up, uniformly (chi-square-free check: within 15 %)
    pos_draws = [d for d, p in zip(draws, positive) if p]
    counts = {k: pos_draws.count(k) for k in [(0, 10), (0, 11), (1, 5)]}
    expect = len(pos_draws) / 3
    assert all(abs(c - expect) < 0.15 * expect for c in counts.values())


def test_sampler_is_seeded_per_epoch_and_handles_one_kind_only():
    vols = [_volume(10, [3, 4])]
    s = SliceSampler(vols, 0.5, seed=7)
    assert s.sample(50, epoch=2) == SliceSampler(vols, 0.5, seed=7).sample(50, epoch=2)
    assert s.sample(50, epoch=2) != s.sample(50, epoch=3)
    assert s.sample(50, epoch=2) != s.sample(50, epoch=2, stream=1)
    assert s.epoch_length() == 4  # 2 positive slices / 0.5
    only_pos = SliceSampler([_volume(3, [0, 1, 2])], 0.3, seed=0)
    assert only_pos.effective_pos_fraction == 1.0
    assert all(z in (0, 1, 2) for _, z in only_pos.sample(20))
    with pytest.raises(ConfigError, match="pos_fraction"):
        SliceSampler(vols, 1.5)


# --------------------------------------------------------------------------- pixels


def test_window_resize_and_batches():
    w = window_ct(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]), (-1000, 400))
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0])
    x = torch.rand(2, 1, 20, 30)
    assert resize_images(x, 16).shape == (2, 1, 16, 16)
    assert resize_images(x, (20, 30)) is x
    m = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    m[..., 2:6, 2:6] = 1
    up = resize_masks(m, 16)
    assert up.dtype == torch.long and set(up.unique().tolist()) == {0, 1}
    assert int(up.sum()) == 64  # nearest-exact: a 4x4 square becomes exactly 8x8
    vol = TrainingVolume("v", "p", np.full((3, 8, 12), -300, np.int16),
                         np.ones((3, 8, 12), bool), (1.0, 1.0, 1.0))
    xb, yb = make_batch([vol], [(0, 0), (0, 2)], (-1000, 400), 16)
    assert xb.shape == yb.shape == (2, 1, 16, 16)
    assert xb.dtype == torch.float32 and yb.dtype == torch.long
    assert torch.allclose(xb, torch.tensor(0.5)) and bool((yb == 1).all())


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    y = torch.zeros(4, 1, 48, 48, dtype=torch.long)
    y[:, :, 10:22, 14:34] = 1  # an off-centre rectangle: any flip or rotation moves it
    x = y.float()
    geo = AugmentConfig(intensity_scale=0, intensity_shift=0, noise_std=0)
    xa, ya = augment_batch(x, y, torch.Generator().manual_seed(0), geo)
    assert ya.dtype == torch.long and xa.shape == x.shape
    agree = ((xa > 0.5).long() == ya).float().mean()
    assert agree > 0.99  # same warp for image and mask (they differ only at the edges)
    assert not torch.equal(ya, y)  # something moved
    xb, yb = augment_batch(x, y, torch.Generator().manual_seed(0), geo)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    flip = AugmentConfig(flip_prob=1.0, rotate_deg=0, scale=0, intensity_scale=0,
                         intensity_shift=0, noise_std=0)
    xf, yf = augment_batch(x, y, torch.Generator().manual_seed(1), flip)
    assert torch.equal(yf, torch.flip(y, dims=(2, 3)))
    assert torch.allclose(xf, torch.flip(x, dims=(2, 3)))
    xi, _ = augment_batch(torch.full((2, 1, 8, 8), 0.5), torch.zeros(2, 1, 8, 8).long(),
                          torch.Generator().manual_seed(2))
    assert 0.0 <= float(xi.min()) and float(xi.max()) <= 1.0
    assert float(xi.std()) > 0  # intensity jitter and noise on the image
