"""Report statistics (bootstrap CIs, paired Wilcoxon), groups by paradigm, costs.jsonl,
summary.md and cases.csv, and the per-case overlay PNG."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import wilcoxon

from autoprompt_seg.bench.metrics import CASE_METRICS
from autoprompt_seg.bench.outputs import write_outputs
from autoprompt_seg.bench.overlay import (
    MAX_BYTES,
    overlay_path,
    pick_slice,
    render_case_overlay,
    save_case_overlay,
    write_overlay,
)
from autoprompt_seg.bench.report import (
    UNTRAINED_MARK,
    bootstrap_ci,
    markdown,
    paired_wilcoxon,
    pareto_front,
    read_costs,
    stats,
    summarise,
)
from autoprompt_seg.errors import InputError


def _row(h: str, case: str, method: str, dice: float, **kw: Any) -> dict[str, Any]:
    r = {"config_hash": h, "case_id": case, "patient_id": case, "dataset": "synth",
         "method": method, "detector": method.split("+")[1], "segmenter": method.split("+")[0],
         "mode": "auto", "status": "ok", "error": "", "trained": True,
         **{m: 0.5 for m in CASE_METRICS}, "dice": dice, "hd95_mm": 5.0, "nsd_2mm": 0.5,
         "tp": 1, "fp": 0, "fn": 0, "detect_s": 0.1, "segment_s": 0.2, "peak_rss_mb": 100.0}
    r.update(kw)
    return r


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
    assert dice_cmp["a"] == "classical+candidates · m · zero-shot"
    md = markdown(s, rows)
    assert "Wilcoxon" in md and "| classical+oracle · m · zero-shot | `h2` |" in md
    assert "| classical+oracle · m · zero-shot | 0.815 ± 0.013 |" in md


def test_groups_split_by_paradigm_and_shots_and_mark_untrained() -> None:
    rows = [_row("z", "c1", "unet+none", 0.3),  # old row: no paradigm -> zero-shot
            _row("f3", "c1", "unet+none", 0.5, paradigm="few-shot", shots=3, train_cases=3,
                 trained=False),
            _row("f5", "c1", "unet+none", 0.6, paradigm="few-shot", shots=5, train_cases=5),
            _row("ft", "c1", "unet+none", 0.8, paradigm="fine-tune", train_cases=40),
            # same four fields as "z" but another configuration: hash appended
            _row("z2abcdef", "c1", "unet+none", 0.35)]
    s = summarise(rows)
    labels = [g["label"] for g in s["groups"]]
    assert labels == ["unet+none · auto · zero-shot [z]",
                      "unet+none · auto · zero-shot [z2abcd]",
                      "unet+none · auto · few-shot K=3", "unet+none · auto · few-shot K=5",
                      "unet+none · auto · fine-tune"]
    g3 = s["groups"][2]
    assert (g3["paradigm"], g3["shots"], g3["train_cases"], g3["trained"]) == \
        ("few-shot", 3, 3, False)
    assert s["groups"][0]["paradigm"] == "zero-shot" and s["groups"][0]["shots"] is None
    md = markdown(s, rows)
    assert md.count(UNTRAINED_MARK) >= 2  # the note and the few-shot K=3 group
    k3 = [x for x in md.splitlines() if "few-shot K=3" in x]
    assert len(k3) >= 5 and all(UNTRAINED_MARK in x for x in k3)  # every table, per case too
    assert not any(UNTRAINED_MARK in x for x in md.splitlines()
                   if "fine-tune" in x and "K=3" not in x)


def test_costs_jsonl_last_row_wins_latency_and_pareto(tmp_path: Path) -> None:
    (tmp_path / "costs.jsonl").write_text(
        json.dumps({"config_hash": "a", "device": "cpu", "params": 1, "gflops": 1.0,
                    "latency_warm_s": 9.0, "latency_runs": [9.0]}) + "\n"
        + json.dumps({"config_hash": "a", "method": "x+y", "mode": "auto",
                      "paradigm": "zero-shot", "shots": None, "device": "cuda:0 (H100)",
                      "params": 38_900_000, "gflops": 812.5, "latency_warm_s": 0.5,
                      "latency_runs": [0.6, 0.5, 0.4], "cuda_peak_mb": 2048.0,
                      "peak_rss_mb": 3000.0}) + "\n"
        + '{"config_hash": "b", "lat')  # truncated last line: ignored
    costs = read_costs(tmp_path)
    assert set(costs) == {"a"} and costs["a"]["latency_warm_s"] == 0.5
    assert read_costs(tmp_path / "nowhere") == {}
    rows = [_row("a", f"c{i}", "x+y", 0.6) for i in range(3)] + \
           [_row("b", f"c{i}", "x+z", 0.7, detect_s=1.0, segment_s=2.0) for i in range(3)] + \
           [_row("c", f"c{i}", "x+w", 0.5, detect_s=3.0, segment_s=3.0) for i in range(3)]
    s = summarise(rows, costs)
    ga, gb, gc = (next(g for g in s["groups"] if g["config_hash"] == h) for h in "abc")
    assert ga["model_cost"]["params"] == 38_900_000 and ga["model_cost"]["cuda_peak_mb"] == 2048
    assert (ga["latency_s"], ga["latency_source"]) == (0.5, "warm")
    assert gb["model_cost"] is None
    assert (gb["latency_s"], gb["latency_source"]) == (pytest.approx(3.0), "per-case")
    # a: fastest; b: slower but more accurate; c: slower and worse -> dominated
    assert (ga["pareto"], gb["pareto"], gc["pareto"]) == (True, True, False)
    md = markdown(s, rows)
    assert "38.9 M" in md and "812.5" in md and "0.5 (n=3)" in md and "cuda:0 (H100)" in md


def test_pareto_front_rules() -> None:
    assert pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.5)}) == {"a", "b"}  # ties: both
    assert pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.6), "c": (None, 0.9)}) == {"b"}


def test_write_outputs_summary_md_and_every_metric_column(tmp_path: Path) -> None:
    rows = [{"config_hash": "h", "case_id": "bad", "method": "m+d", "mode": "auto",
             "status": "skipped", "error": "label missing"},
            _row("h", "c1", "m+d", 0.25, hd95_mm=None),
            _row("h", "c2", "m+d", 0.75)]
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "report.md").write_text("# Benchmark report\n\nold\n")
    summary = write_outputs(tmp_path)
    assert summary["groups"][0]["n_ok"] == 2
    for f in ("cases.csv", "lesions.csv", "summary.json", "summary.md", "report.html"):
        assert (tmp_path / f).is_file(), f
    assert not (tmp_path / "report.md").exists()  # the old name is gone
    assert "m+d · auto · zero-shot" in (tmp_path / "summary.md").read_text()
    with open(tmp_path / "cases.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert set(CASE_METRICS) <= set(reader.fieldnames or [])
        got = {r["case_id"]: r for r in reader}
    assert got["bad"]["status"] == "skipped" and got["bad"]["dice"] == ""
    for r in rows[1:]:
        for m in CASE_METRICS:
            if r[m] is None:
                assert got[r["case_id"]][m] == ""
            else:
                assert float(got[r["case_id"]][m]) == pytest.approx(r[m], abs=0)
    assert got["c1"]["paradigm"] == "zero-shot"


# --- overlay ------------------------------------------------------------------------------

def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float],
          radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2


def test_overlay_png_is_small_valid_and_atomic(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.normal(-700, 200, size=(20, 128, 128)).astype(np.float32)  # noisy, like CT
    gt = _ball(image.shape, (12, 60, 70), 9)
    pred = _ball(image.shape, (11, 62, 74), 8)
    image[gt] = 30.0
    p = save_case_overlay(image, gt, pred, (2.5, 0.8, 0.8),
                          overlay_path(tmp_path, "abc", "case<1>"), title="case<1> · Dice 0.8")
    assert p == tmp_path / "overlays" / "abc" / "case<1>.png"
    data = p.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) <= MAX_BYTES
    im = Image.open(io.BytesIO(data)).convert("RGB")
    assert im.size[0] >= 300
    px = np.asarray(im).reshape(-1, 3).astype(int)
    # both contour colours are drawn: yellow (GT) and cyan (prediction)
    assert np.any((px[:, 0] > 200) & (px[:, 1] > 170) & (px[:, 2] < 80))
    assert np.any((px[:, 0] < 80) & (px[:, 1] > 170) & (px[:, 2] > 200))
    assert [f.name for f in p.parent.iterdir()] == [p.name]  # no temporary file left


def test_overlay_slice_choice_and_bad_input() -> None:
    gt = np.zeros((10, 32, 32), bool)
    pred = np.zeros_like(gt)
    gt[3, 5:10, 5:10] = True
    gt[6, 5:20, 5:20] = True
    pred[8, 0:30, 0:30] = True
    assert pick_slice(gt, pred) == 6  # largest GT area, not the largest prediction
    assert pick_slice(np.zeros_like(gt), pred) == 8
    assert pick_slice(np.zeros_like(gt), np.zeros_like(gt)) == 5
    img = np.zeros(gt.shape, np.float32)
    assert render_case_overlay(img, np.zeros_like(gt), np.zeros_like(gt),
                               (1.0, 1.0, 1.0)).startswith(b"\x89PNG")
    with pytest.raises(InputError, match="'pred'.*\\(10, 32, 32\\).*\\(10, 32, 31\\)"):
        render_case_overlay(img, gt, pred[:, :, :31], (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="'spacing'"):
        render_case_overlay(img, gt, pred, (1.0, 0.0, 1.0))


def test_write_overlay_takes_png_bytes_only(tmp_path: Path) -> None:
    png = render_case_overlay(np.zeros((4, 16, 16), np.float32), np.zeros((4, 16, 16), bool),
                              np.zeros((4, 16, 16), bool), (1.0, 1.0, 1.0))
    p = write_overlay(tmp_path / "a" / "b.png", png)
    assert p.read_bytes() == png and oct(p.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(InputError, match="'png'"):
        write_overlay(tmp_path / "c.png", b"GIF89a")
    assert not (tmp_path / "c.png").exists()


def test_detectors_compare_on_false_positives_per_study() -> None:
    rows = [_row("h1", f"c{i}", "classical+candidates", 0.7, fp=0) for i in range(3)]
    rows += [_row("h2", f"c{i}", "classical+monai_retinanet", 0.6, fp=fp)
             for i, fp in enumerate((0, 1, 3))]
    s = summarise(rows)
    fps = {g["method"]: g["metrics"]["fp"]["mean"] for g in s["groups"]}
    assert fps == {"classical+candidates": 0.0, "classical+monai_retinanet": pytest.approx(4 / 3)}
    assert "FP/study" in markdown(s, rows)
