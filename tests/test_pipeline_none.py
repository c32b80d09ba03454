"""``--detector none``: prompt-free segmenters keep their whole mask, split into lesions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg import registry
from autoprompt_seg.config import Settings
from autoprompt_seg.detect.none import NoPromptDetector
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.pipeline import run, split_components
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Volume
from nnunet_helpers import random_tiny_model, tiny_chest, volume_of


def _volume(shape: tuple[int, int, int] = (10, 20, 20)) -> Volume:
    return Volume(array=np.zeros(shape, np.float32), spacing=(2.0, 1.0, 1.0),
                  origin=(0.0, 0.0, 0.0), direction=np.eye(3))


class _TwoBlobs:
    """A prompt-free segmenter whose mask has two separate blobs (largest second)."""

    promptable = False

    def info(self) -> BackendInfo:
        return BackendInfo(name="twoblobs", kind="segmenter", version="test")

    def segment(self, volume: Volume, boxes: Sequence[Box3D], progress=None
                ) -> list[LesionMask]:
        full = np.zeros(volume.shape, bool)
        full[1:3, 2:4, 2:4] = True  # 8 voxels
        full[5:9, 10:15, 10:15] = True  # 100 voxels
        return [LesionMask.from_full(full, b) for b in boxes]


def test_none_detector_box_covers_the_volume():
    vol = _volume()
    (box,) = NoPromptDetector().detect(vol)
    assert box.size == vol.shape and box.key_slice == 5 and not box.from_person


def test_prompt_free_mask_is_split_into_components_largest_first():
    pred = run(_volume(), NoPromptDetector(), _TwoBlobs())
    assert [m.voxel_count for m in pred.lesions] == [100, 8]
    big = pred.lesions[0]
    assert (big.box.z0, big.box.z1, big.box.y0, big.box.y1) == (5, 9, 10, 15)
    assert big.box.z0 <= big.box.key_slice < big.box.z1
    lab = pred.label_map()
    assert (lab == 1).sum() == 100 and (lab == 2).sum() == 8


def test_split_components_of_an_empty_mask_is_empty():
    box = Box3D(z0=0, z1=1, y0=0, y1=1, x0=0, x1=1, key_slice=0)
    assert split_components(LesionMask.from_full(np.zeros((2, 2, 2), bool), box)) == []


def test_promptable_segmenter_with_no_prompt_is_refused():
    seg = registry.get("segmenter", "classical").create(Settings())
    with pytest.raises(ConfigError, match="--detector none.*classical"):
        run(_volume(), NoPromptDetector(), seg)


def test_nnunet_segmenter_without_prompt_keeps_its_whole_mask(tmp_path: Path):
    """The real nnU-Net segmenter (random test weights): --detector none gives exactly its
    full mask, one lesion per component."""
    from scipy import ndimage as ndi

    model = random_tiny_model(tmp_path / "model", seed=3)
    settings = Settings(device="cpu", threads=2, weights_dir=tmp_path / "w",
                        options={"nnunet": {"model_dir": str(model)}})
    seg = registry.get("segmenter", "nnunet").create(settings)
    det = registry.get("detector", "none").create(settings)
    vol = volume_of(tiny_chest(9))
    full = seg.full_mask(vol) > 0
    pred = run(vol, det, seg)
    assert np.array_equal(pred.label_map() > 0, full)
    _, n = ndi.label(full, structure=np.ones((3, 3, 3), bool))
    assert len(pred.lesions) == n
    assert pred.segmenter.trained is False
