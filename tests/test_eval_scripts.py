"""scripts/eval_wholechest.py: the totals it prints at other operating points (--sweep),
from one run, are those of a run at that operating point."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from autoprompt_seg import registry
from autoprompt_seg.config import Settings
from autoprompt_seg.synthetic import synthetic_chest
from autoprompt_seg.types import Box3D, LesionMask, OperatingPoint, Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import eval_wholechest  # noqa: E402


def test_a_swept_operating_point_scores_like_a_run_at_it(tmp_path):
    chest = synthetic_chest(shape=(40, 160, 160), spacing=(2.5, 1.5, 1.5), n_tumours=2,
                            seed=3, tumour_radius_mm=(10.0, 8.0))
    vol = Volume(array=chest.hu, spacing=chest.spacing, origin=(0.0, 0.0, 0.0),
                 direction=np.eye(3))
    settings = Settings(cache_dir=tmp_path)
    det = registry.get("detector", "candidates").create(settings)
    seg = registry.get("segmenter", "classical").create(settings)
    gt = chest.labels.astype(np.uint8)
    scores = sorted(b.score for b in det.detect(vol))
    assert len(scores) == 2 and scores[0] < scores[1], scores  # the two tumours
    between = round((scores[0] + scores[1]) / 2, 3)

    def key(r: eval_wholechest.Row) -> tuple:
        return r.found, r.fps, round(r.union_dice, 6), round(r.matched_dice, 6)

    low, swept = eval_wholechest.score_case("s", "g", vol, gt, det, seg,
                                            OperatingPoint(min_score=0.0), (0.0, between))
    at, _ = eval_wholechest.score_case("s", "g", vol, gt, det, seg,
                                       OperatingPoint(min_score=between))
    assert key(swept[0.0]) == key(low)
    assert key(swept[between]) == key(at)
    assert at.found == low.found - 1  # the sweep did leave a lesion out


def test_inserted_sensitivity_leaves_the_backgrounds_own_lesion_out(capsys):
    """A transplanted case whose background holds a real lesion of its own: finding only
    that lesion is 1 of 2 lesions, but 0 of 1 inserted tumours."""
    vol = Volume(array=np.zeros((8, 20, 20), np.float32), spacing=(1.0, 1.0, 1.0),
                 origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    labels = np.zeros(vol.shape, np.uint8)
    labels[2:4, 2:5, 2:5] = 1  # the inserted tumour
    labels[2:4, 12:15, 12:15] = eval_wholechest.OWN_LABEL  # the background's own lesion
    own = labels == eval_wholechest.OWN_LABEL
    box = Box3D(z0=2, z1=4, y0=12, y1=15, x0=12, x1=15, key_slice=2, score=0.9,
                source="candidates")
    row = eval_wholechest.tally("bg+pat_2#0-pleura", "tp dev", vol, labels,
                                (LesionMask.from_full(own, box, 0.9),), 0.1, 0)
    assert (row.n_gt, row.found, row.fps) == (2, 1, 0)
    assert (row.n_inserted, row.found_inserted) == (1, 0)
    eval_wholechest.print_groups([row])
    out = capsys.readouterr().out
    assert "lesion sensitivity  50.0% (1/2)" in out
    assert "inserted   0.0% (0/1)" in out
    found = replace(row, case="bg+pat_1#1-pleura", background="bg", source="pat_1",
                    site="pleura", found_inserted=1)
    eval_wholechest.print_inserted_by([replace(row, background="bg", source="pat_2",
                                               site="pleura"), found])
    out = capsys.readouterr().out
    assert "by background: bg 1/2 (50%)" in out
    assert "by source: pat_1 1/1 (100%), pat_2 0/1 (0%)" in out
    assert "by site: pleura 1/2 (50%)" in out
    assert "missed (1): bg+pat_2#0-pleura" in out
    # a real case (no own label): every lesion is "inserted", and no second column
    real = eval_wholechest.tally("pat_1", "real pycerr", vol, (labels == 1).astype(np.uint8),
                                 (), 0.1, 0)
    assert (real.n_inserted, real.found_inserted) == (1, 0)
    eval_wholechest.print_groups([real])
    assert "inserted" not in capsys.readouterr().out
