"""Summaries of a bench output folder: CSVs, ``summary.json`` and ``report.md``.

Statistics per (method, mode) group over the ``ok`` cases: for each metric the number of
finite values ``n``, mean, sample sd (ddof = 1; 0 for a single value), median and IQR.
NaN values (e.g. HD95 when the prediction is empty) are left out and show as a smaller
``n``. Each metric also gets a 95 % percentile-bootstrap confidence interval of the mean
(``ci95``; 2000 resamples, seeded, so reruns give the same interval).

``comparisons``: for every pair of groups and each of Dice, HD95 and NSD, a paired
two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) over the cases that are
``ok`` with a finite value in both groups (``p`` is None with fewer than 2 pairs; 1.0 when
every difference is zero). Not yet here: the HTML report.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .metrics import CASE_METRICS

log = logging.getLogger(__name__)

COST_FIELDS = ("load_s", "detect_s", "segment_s", "metrics_s", "peak_rss_mb")
_LABELS = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 mm", "assd_mm": "ASSD mm",
           "nsd_2mm": "NSD@2mm", "vol_err_ml": "ΔV ml", "abs_vol_err_ml": "abs ΔV ml",
           "dice2d": "Dice2D", "sensitivity": "Sens", "precision": "Prec", "f1": "F1",
           "detect_s": "detect s", "segment_s": "segment s", "peak_rss_mb": "peak RSS MiB"}


BOOTSTRAP_N = 2000
BOOTSTRAP_SEED = 0
COMPARE_METRICS = ("dice", "hd95_mm", "nsd_2mm")


def _finite(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    return np.array([float(x) for x in values if x is not None and math.isfinite(float(x))],
                    dtype=np.float64)


def bootstrap_ci(values: Sequence[Any], n_boot: int = BOOTSTRAP_N,
                 seed: int = BOOTSTRAP_SEED, level: float = 0.95
                 ) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of the mean of the finite values (None if there are none)."""
    v = _finite(values)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def stats(values: Sequence[Any]) -> dict[str, Any]:
    """n, mean, sd, median, q1, q3, ci95 of the finite values (None when there are none)."""
    v = _finite(values)
    if v.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q1": None, "q3": None,
                "ci95": None}
    ci = bootstrap_ci(v.tolist())
    return {"n": int(v.size), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
            "q3": float(np.percentile(v, 75)), "ci95": list(ci) if ci else None}


def paired_wilcoxon(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test over the case ids present in both mappings
    (case id -> value; non-finite values dropped)."""
    from scipy.stats import wilcoxon

    ids = sorted(k for k in set(a) & set(b)
                 if a[k] is not None and b[k] is not None
                 and math.isfinite(float(a[k])) and math.isfinite(float(b[k])))
    x = np.array([float(a[k]) for k in ids])
    y = np.array([float(b[k]) for k in ids])
    out: dict[str, Any] = {"n_pairs": len(ids), "p": None,
                           "median_diff": float(np.median(x - y)) if ids else None}
    if len(ids) < 2:
        return out
    if np.all(x == y):
        out["p"] = 1.0
        return out
    out["p"] = float(wilcoxon(x, y).pvalue)
    return out


def latest_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config_hash, case_id): the last one written."""
    seen: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        seen[(r.get("config_hash"), r.get("case_id"))] = r
    return list(seen.values())


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in latest_rows(rows):
        groups.setdefault((r["config_hash"], r["method"], r["mode"]), []).append(r)
    out = []
    for (chash, method, mode), rs in sorted(groups.items(), key=lambda kv: kv[0][1:]):
        ok = [r for r in rs if r.get("status") == "ok"]
        out.append({
            "config_hash": chash, "method": method, "mode": mode,
            "segmenter": rs[0].get("segmenter"), "detector": rs[0].get("detector"),
            "trained": all(r.get("trained", True) for r in rs),
            "n_cases": len(rs), "n_ok": len(ok),
            "n_skipped": sum(r.get("status") == "skipped" for r in rs),
            "n_failed": sum(r.get("status") == "failed" for r in rs),
            "problems": {r["case_id"]: r.get("error", "") for r in rs
                         if r.get("status") != "ok"},
            "metrics": {m: stats([r.get(m) for r in ok]) for m in CASE_METRICS},
            "cost": {m: stats([r.get(m) for r in ok]) for m in COST_FIELDS},
        })
    comparisons = []
    for i, ga in enumerate(out):
        for gb in out[i + 1:]:
            ra = [r for r in groups[(ga["config_hash"], ga["method"], ga["mode"])]
                  if r.get("status") == "ok"]
            rb = [r for r in groups[(gb["config_hash"], gb["method"], gb["mode"])]
                  if r.get("status") == "ok"]
            for m in COMPARE_METRICS:
                test = paired_wilcoxon({r["case_id"]: r.get(m) for r in ra},
                                       {r["case_id"]: r.get(m) for r in rb})
                comparisons.append({"a": f"{ga['method']} {ga['mode']}",
                                    "b": f"{gb['method']} {gb['mode']}", "metric": m,
                                    **test})
    return {"version": 1, "groups": out, "comparisons": comparisons}


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    if not s or s.get("n", 0) == 0 or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def markdown(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    cols = ["dice", "iou", "hd95_mm", "assd_mm", "nsd_2mm", "abs_vol_err_ml", "dice2d",
            "sensitivity", "precision", "f1"]
    lines = ["# Benchmark report", "",
             "Mean ± sd over the evaluated cases (NaN-aware; see `summary.json` for n, "
             "median and IQR). Methods marked *untrained* use checkpoints that are not a "
             "trained release.", "",
             "| method | mode | ok/skip/fail | " + " | ".join(_LABELS[c] for c in cols)
             + " | detect s | segment s | peak RSS MiB |",
             "|" + "---|" * (len(cols) + 6)]
    for g in summary["groups"]:
        name = g["method"] + ("" if g["trained"] else " *untrained*")
        cells = [_fmt(g["metrics"][c], 1 if c.endswith(("_mm", "_ml")) else 3) for c in cols]
        cost = [_fmt(g["cost"][c], 2) for c in ("detect_s", "segment_s")]
        rss = g["cost"]["peak_rss_mb"]
        rss_s = f"{rss['mean']:.0f}" if rss.get("mean") is not None else "–"
        lines.append(f"| {name} | {g['mode']} | {g['n_ok']}/{g['n_skipped']}/{g['n_failed']} "
                     f"| " + " | ".join(cells) + " | " + " | ".join(cost) + f" | {rss_s} |")
    comps = summary.get("comparisons", [])
    if comps:
        lines += ["", "## Paired comparisons (Wilcoxon signed-rank, two-sided)", "",
                  "| A | B | metric | pairs | median A−B | p |", "|---|---|---|---|---|---|"]
        for c in comps:
            md = "–" if c["median_diff"] is None else f"{c['median_diff']:.3f}"
            p = "–" if c["p"] is None else f"{c['p']:.3g}"
            lines.append(f"| {c['a']} | {c['b']} | {c['metric']} | {c['n_pairs']} | {md} "
                         f"| {p} |")
    lines += ["", "## Per case", "",
              "| case | method | mode | status | Dice | HD95 mm | NSD@2mm | TP/FP/FN | "
              "segment s |", "|---|---|---|---|---|---|---|---|---|"]

    def num(v: Any, d: int = 3) -> str:
        return "–" if v is None else f"{float(v):.{d}f}"

    for r in sorted(latest_rows(rows), key=lambda r: (r["case_id"], r["method"], r["mode"])):
        if r.get("status") == "ok":
            tp = f"{int(r['tp'])}/{int(r['fp'])}/{int(r['fn'])}"
            lines.append(f"| {r['case_id']} | {r['method']} | {r['mode']} | ok | "
                         f"{num(r.get('dice'))} | {num(r.get('hd95_mm'), 1)} | "
                         f"{num(r.get('nsd_2mm'))} | {tp} | {num(r.get('segment_s'), 2)} |")
        else:
            err = str(r.get("error", "")).replace("|", "\\|")[:160]
            lines.append(f"| {r['case_id']} | {r['method']} | {r['mode']} | "
                         f"{r.get('status')}: {err} | | | | | |")
    lines += ["", "Matching rule, empty-mask conventions and metric definitions: "
              "`autoprompt_seg.bench.metrics` and `docs/bench.md`.", ""]
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()})


def write_outputs(out_dir: str | Path) -> dict[str, Any]:
    """(Re)write ``cases.csv``, ``lesions.csv``, ``summary.json`` and ``report.md``."""
    from .runner import CASES_FILE, LESIONS_FILE, read_rows

    out = Path(out_dir)
    rows = read_rows(out / CASES_FILE)
    done = {(r.get("config_hash"), r.get("case_id")) for r in rows}
    # keep lesion rows of completed cases only, once (a crash between the two appends
    # can leave a case's lesion rows written twice; they are identical)
    lrows = list({json.dumps(r, sort_keys=True): r for r in read_rows(out / LESIONS_FILE)
                  if (r.get("config_hash"), r.get("case_id")) in done}.values())
    _write_csv(out / "cases.csv", latest_rows(rows))
    _write_csv(out / "lesions.csv", lrows)
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(summary, rows), encoding="utf-8")
    log.info("wrote %s", out / "report.md")
    return summary
