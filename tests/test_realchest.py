"""The default detector and operating point on real whole-chest CT (PyRadiomics' lung1 and
lung2: 5 mm slices, one labelled lesion each). What a user gets from `autoseg predict`
with no option: the lesion, and nothing else segmented."""

from __future__ import annotations

import pytest

from autoprompt_seg import pipeline, registry
from autoprompt_seg.bench.metrics import overlap_surface
from autoprompt_seg.config import Settings
from autoprompt_seg.io.image import load_image


@pytest.mark.parametrize(("case", "min_dice"), [("lung1", 0.8), ("lung2", 0.8)])
def test_the_default_writes_the_lesion_and_nothing_else(wholechest_root, tmp_path, case,
                                                        min_dice):
    vol = load_image(wholechest_root / f"{case}_image.nrrd")
    gt = load_image(wholechest_root / f"{case}_label.nrrd").array > 0
    settings = Settings(cache_dir=tmp_path)
    pred = pipeline.run(vol, registry.get("detector", "candidates").create(settings),
                        registry.get("segmenter", "classical").create(settings))
    hits = [les for les in pred.lesions if (gt[les.slices()] & les.mask).any()]
    false = [les.box.to_dict() for les in pred.lesions if les not in hits]
    assert hits and not false, f"{case}: false positives written: {false}"
    assert overlap_surface(pred.union_mask(), gt, vol.spacing).dice >= min_dice
    # the candidates left out are listed, below the operating point
    assert all(b.score < pred.operating_point.min_score for b in pred.not_segmented)
    assert all(les.score >= pred.operating_point.min_score for les in pred.lesions)
