"""Report statistics: bootstrap CIs and paired Wilcoxon tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from autoprompt_seg.bench.report import bootstrap_ci, markdown, paired_wilcoxon, stats, summarise


def test_stats_and_bootstrap_are_deterministic_and_sane() -> None:
    v = [0.1, 0.5, 0.7, 0.9, None, float("nan")]
    s = stats(v)
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.55)
    assert s["sd"] == pytest.approx(np.std([0.1, 0.5, 0.7, 0.9], ddof=1))
    lo, hi = s["ci95"]
    assert 0.1 <= lo < 0.55 < hi <= 0.9
    assert bootstrap_ci(v) == bootstrap_ci(v)
    assert stats([None])["n"] == 0 and stats([None])["ci95"] is None


def test_paired_wilcoxon_pairs_by_case_id() -> None:
    a = {"c1": 0.9, "c2": 0.8, "c3": 0.7, "c4": 0.95, "c5": 0.6, "only_a": 0.0}
    b = {"c5": 0.5, "c4": 0.7, "c3": 0.4, "c2": 0.75, "c1": 0.85}
    t = paired_wilcoxon(a, b)
    ids = ["c1", "c2", "c3", "c4", "c5"]
    assert t["n_pairs"] == 5
    assert t["p"] == pytest.approx(wilcoxon([a[i] for i in ids], [b[i] for i in ids]).pvalue)
    assert paired_wilcoxon({"x": 1.0}, {"x": 0.0})["p"] is None
    assert paired_wilcoxon({"x": 1.0, "y": 2.0}, {"x": 1.0, "y": 2.0})["p"] == 1.0


def test_summary_compares_groups_in_markdown() -> None:
    rows = []
    for h, method, base in (("h1", "classical+candidates", 0.5), ("h2", "classical+oracle", 0.8)):
        for i in range(4):
            rows.append({"config_hash": h, "case_id": f"c{i}", "method": method, "mode": "m",
                         "status": "ok", "dice": base + 0.01 * i, "hd95_mm": 5.0 + i,
                         "nsd_2mm": 0.5, "tp": 1, "fp": 0, "fn": 0, "segment_s": 0.1,
                         "peak_rss_mb": 100.0})
    s = summarise(rows)
    assert len(s["groups"]) == 2
    dice_cmp = [c for c in s["comparisons"] if c["metric"] == "dice"][0]
    assert dice_cmp["n_pairs"] == 4 and dice_cmp["median_diff"] == pytest.approx(-0.3)
    md = markdown(s, rows)
    assert "Wilcoxon" in md and "| classical+oracle | m | 4/0/0 |" in md
