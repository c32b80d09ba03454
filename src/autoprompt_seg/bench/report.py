"""Summaries of a bench output folder: CSVs, ``summary.json``, ``summary.md``, ``report.html``.

**Groups.** One group per configuration (``config_hash``), identified for people by
(method, prompt mode, training paradigm, shots): the ``label`` reads like
``"unet+none · auto · few-shot K=3"``. Rows written before the runner recorded a paradigm
count as ``zero-shot`` with ``shots`` and ``train_cases`` null. Two configurations with the
same four fields (e.g. two jitter levels) get the first 6 hex digits of their hash appended
to the label. A group whose rows say ``trained: false`` ran on random test checkpoints and
is marked "UNTRAINED test weights" wherever it appears.

**Statistics** per group over the ``ok`` cases: for each metric the number of finite
values ``n``, mean, sample sd (ddof = 1; 0 for a single value), median and IQR. NaN values
(e.g. HD95 when the prediction is empty) are left out and show as a smaller ``n``. Each
metric also gets a 95 % percentile-bootstrap confidence interval of the mean (``ci95``;
2000 resamples, seeded, so reruns give the same interval).

**Cost.** ``cost`` holds the same statistics of the per-case timings and peak RSS from the
case rows. ``model_cost`` is the runner's measurement for the configuration from
``costs.jsonl`` (parameters, GFLOPs per volume, median warm latency over ``latency_runs``,
device, peak CUDA memory, peak RSS, and the case and shape it was measured on; the last
row per ``config_hash`` wins; absent file or row: null). ``latency_s`` is the latency used for the accuracy-versus-latency chart: the
median warm latency when ``costs.jsonl`` has it (``latency_source: "warm"``), else the mean
of ``detect_s + segment_s`` over the ok cases (``"per-case"``). ``pareto`` is true for the
groups on the Pareto front of (lower latency, higher mean Dice): no other group is at least
as fast and at least as accurate, and strictly better in one.

``comparisons``: for every pair of groups and each of Dice, HD95 and NSD, a paired
two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) over the cases that are
``ok`` with a finite value in both groups (``p`` is None with fewer than 2 pairs; 1.0 when
every difference is zero).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .metrics import CASE_METRICS
from .rows import read_rows

log = logging.getLogger(__name__)

COST_FIELDS = ("load_s", "detect_s", "segment_s", "metrics_s", "peak_rss_mb")
_LABELS = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 mm", "assd_mm": "ASSD mm",
           "nsd_2mm": "NSD@2mm", "vol_err_ml": "ΔV ml", "abs_vol_err_ml": "abs ΔV ml",
           "dice2d": "Dice2D", "sensitivity": "Sens", "precision": "Prec", "f1": "F1", "fp": "FP/study",
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


SUMMARY_VERSION = 2
COSTS_FILE = "costs.jsonl"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
#: Training paradigms, in report order; rows without one are zero-shot.
PARADIGMS = ("zero-shot", "few-shot", "fine-tune")
UNTRAINED_MARK = "UNTRAINED test weights"
#: Fields of a ``costs.jsonl`` row kept in a group's ``model_cost``.
MODEL_COST_FIELDS = ("device", "params", "gflops", "latency_warm_s", "latency_runs",
                     "cuda_peak_mb", "peak_rss_mb", "case_id", "shape")
#: Leading columns of ``cases.csv``; every metric column is always present.
CASE_COLUMNS = ("config_hash", "case_id", "patient_id", "dataset", "method", "detector",
                "segmenter", "mode", "paradigm", "shots", "train_cases", "trained", "status",
                "error", *CASE_METRICS)


def normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a case row with the group fields filled in for rows written before they
    existed: ``paradigm`` "zero-shot", ``shots`` and ``train_cases`` None."""
    r = dict(row)
    if not r.get("paradigm"):
        r["paradigm"] = "zero-shot"
    r.setdefault("shots", None)
    r.setdefault("train_cases", None)
    return r


def latest_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config_hash, case_id): the last one written (normalised)."""
    seen: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        seen[(r.get("config_hash"), r.get("case_id"))] = normalise(r)
    return list(seen.values())


def group_label(method: str, mode: str, paradigm: str = "zero-shot",
                shots: int | None = None) -> str:
    """``"unet+none · auto · few-shot K=3"``."""
    k = f" K={shots}" if shots is not None else ""
    return f"{method} · {mode} · {paradigm}{k}"


def read_costs(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``costs.jsonl`` as config_hash -> row (the last row per hash wins). An absent file
    gives {}; a truncated or invalid line is logged and ignored."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_rows(Path(out_dir) / COSTS_FILE):
        if isinstance(r, dict) and r.get("config_hash"):
            out[str(r["config_hash"])] = r
    return out


def _paradigm_rank(p: str) -> tuple[int, str]:
    return (PARADIGMS.index(p) if p in PARADIGMS else len(PARADIGMS), p)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pareto_front(points: Mapping[str, tuple[float | None, float | None]]) -> set[str]:
    """Keys of the non-dominated (latency, accuracy) points: lower latency and higher
    accuracy are better; points with a missing coordinate are never on the front."""
    valid = {k: (x, y) for k, (x, y) in points.items() if x is not None and y is not None}
    front = set()
    for k, (x, y) in valid.items():
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y)
                        for k2, (x2, y2) in valid.items() if k2 != k)
        if not dominated:
            front.add(k)
    return front


def summarise(rows: Sequence[dict[str, Any]],
              costs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The summary of case ``rows`` (and the runner's ``costs`` per config_hash):
    ``{"version", "datasets", "n_cases", "groups", "comparisons"}`` (module docstring)."""
    costs = costs or {}
    latest = latest_rows(rows)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in latest:
        key = (r["config_hash"], r["method"], r["mode"], r["paradigm"], r["shots"])
        groups.setdefault(key, []).append(r)

    def order(k: tuple[Any, ...]) -> tuple[Any, ...]:
        chash, method, mode, paradigm, shots = k
        return (method, mode, _paradigm_rank(paradigm), -1 if shots is None else shots,
                str(chash))

    keys = sorted(groups, key=order)
    base_labels = {k: group_label(k[1], k[2], k[3], k[4]) for k in keys}
    counts: dict[str, int] = {}
    for lab in base_labels.values():
        counts[lab] = counts.get(lab, 0) + 1
    out = []
    for key in keys:
        chash, method, mode, paradigm, shots = key
        rs = groups[key]
        ok = [r for r in rs if r.get("status") == "ok"]
        label = base_labels[key]
        if counts[label] > 1:
            label += f" [{str(chash)[:6]}]"
        cost_row = costs.get(str(chash))
        model_cost = ({f: cost_row.get(f) for f in MODEL_COST_FIELDS}
                      if cost_row is not None else None)
        train_cases = next((r["train_cases"] for r in rs if r.get("train_cases") is not None),
                           None)
        g: dict[str, Any] = {
            "config_hash": chash, "label": label, "method": method, "mode": mode,
            "paradigm": paradigm, "shots": shots, "train_cases": train_cases,
            "segmenter": rs[0].get("segmenter"), "detector": rs[0].get("detector"),
            "datasets": sorted({str(r["dataset"]) for r in rs if r.get("dataset")}),
            "trained": all(r.get("trained", True) for r in rs),
            "n_cases": len(rs), "n_ok": len(ok),
            "n_skipped": sum(r.get("status") == "skipped" for r in rs),
            "n_failed": sum(r.get("status") == "failed" for r in rs),
            "problems": {r["case_id"]: r.get("error", "") for r in rs
                         if r.get("status") != "ok"},
            "metrics": {m: stats([r.get(m) for r in ok]) for m in CASE_METRICS},
            "cost": {m: stats([r.get(m) for r in ok]) for m in COST_FIELDS},
            "model_cost": model_cost,
        }
        warm = _num(model_cost.get("latency_warm_s")) if model_cost else None
        if warm is not None:
            g["latency_s"], g["latency_source"] = warm, "warm"
        else:
            per_case = [(_num(r.get("detect_s")) or 0.0) + (_num(r.get("segment_s")) or 0.0)
                        for r in ok if _num(r.get("segment_s")) is not None]
            g["latency_s"] = float(np.mean(per_case)) if per_case else None
            g["latency_source"] = "per-case" if per_case else None
        out.append(g)
    front = pareto_front({g["label"]: (g["latency_s"], g["metrics"]["dice"]["mean"])
                          for g in out})
    for g in out:
        g["pareto"] = g["label"] in front
    comparisons = []
    for i, ga in enumerate(out):
        for j in range(i + 1, len(out)):
            gb = out[j]
            ra = [r for r in groups[keys[i]] if r.get("status") == "ok"]
            rb = [r for r in groups[keys[j]] if r.get("status") == "ok"]
            for m in COMPARE_METRICS:
                test = paired_wilcoxon({r["case_id"]: r.get(m) for r in ra},
                                       {r["case_id"]: r.get(m) for r in rb})
                comparisons.append({"a": ga["label"], "b": gb["label"],
                                    "a_hash": ga["config_hash"], "b_hash": gb["config_hash"],
                                    "metric": m, **test})
    return {"version": SUMMARY_VERSION,
            "datasets": sorted({str(r["dataset"]) for r in latest if r.get("dataset")}),
            "n_cases": len({r.get("case_id") for r in latest}),
            "groups": out, "comparisons": comparisons}


# --- text formatting shared by summary.md and report.html -------------------------------

def metric_digits(metric: str) -> int:
    """Decimals to show: 1 for mm and ml, 2 for seconds, 3 otherwise."""
    if metric.endswith(("_mm", "_ml")):
        return 1
    if metric.endswith("_s"):
        return 2
    return 3


def fmt_mean_sd(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.780 ± 0.100"``; "–" without a value."""
    if not s or s.get("n", 0) == 0 or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


_fmt = fmt_mean_sd  # the name used before


def fmt_median_iqr(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.790 [0.700, 0.850]"``; "–" without a value."""
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]"


def fmt_ci(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.680–0.860"`` (95 % bootstrap CI of the mean); "–" without a value."""
    if not s or not s.get("ci95"):
        return "–"
    lo, hi = s["ci95"]
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def fmt_value(v: Any, digits: int = 3) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.{digits}f}"


def fmt_params(v: Any) -> str:
    """``"38.9 M"``, ``"412 k"``; "–" without a value."""
    f = _num(v)
    if f is None:
        return "–"
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(f) >= div:
            return f"{f / div:.3g}{unit}"
    return f"{f:.0f}"


def cost_cells(g: Mapping[str, Any]) -> dict[str, str]:
    """The cost columns of a group as text: device, params, GFLOPs, warm latency, CUDA and
    RSS peaks, per-case detect and segment seconds, the latency used for the chart."""
    mc = g.get("model_cost") or {}
    runs = mc.get("latency_runs")
    warm = _num(mc.get("latency_warm_s"))
    notes = ([f"n={len(runs)}"] if isinstance(runs, list) else []) + \
        ([f"on {mc['case_id']}"] if mc.get("case_id") else [])
    warm_s = "–" if warm is None else f"{warm:.3g}" + (f" ({', '.join(notes)})" if notes else "")
    rss = _num(mc.get("peak_rss_mb"))
    if rss is None:
        rss = (g.get("cost", {}).get("peak_rss_mb") or {}).get("mean")
    lat = _num(g.get("latency_s"))
    lat_s = "–" if lat is None else f"{lat:.3g} ({g.get('latency_source')})"
    return {"device": str(mc.get("device") or "–"), "params": fmt_params(mc.get("params")),
            "gflops": fmt_value(mc.get("gflops"), 1), "warm_s": warm_s,
            "cuda_mb": fmt_value(mc.get("cuda_peak_mb"), 0),
            "rss_mb": fmt_value(rss, 0),
            "detect_s": fmt_mean_sd(g.get("cost", {}).get("detect_s"), 2),
            "segment_s": fmt_mean_sd(g.get("cost", {}).get("segment_s"), 2),
            "latency": lat_s}


COST_HEADERS = {"device": "device", "params": "params", "gflops": "GFLOPs/volume",
                "warm_s": "warm latency s (median)", "cuda_mb": "CUDA peak MiB",
                "rss_mb": "peak RSS MiB", "detect_s": "detect s/case",
                "segment_s": "segment s/case", "latency": "latency for chart s"}


def group_weights(g: Mapping[str, Any]) -> str:
    """"trained" or the untrained mark."""
    return "trained" if g.get("trained", True) else UNTRAINED_MARK


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_name(g: Mapping[str, Any]) -> str:
    """A group's label for a markdown cell, with the untrained mark where it applies."""
    return _md(g["label"]) + ("" if g.get("trained", True) else f" **{UNTRAINED_MARK}**")


def markdown(summary: dict[str, Any], rows: Sequence[dict[str, Any]], *,
             generated: str | None = None) -> str:
    """``summary.md``: groups, accuracy (mean ± sd; median [IQR] and CI of the main
    metrics), cost, paired comparisons and the per-case table."""
    cols = ["dice", "iou", "hd95_mm", "assd_mm", "nsd_2mm", "abs_vol_err_ml", "dice2d",
            "sensitivity", "precision", "f1", "fp"]
    groups = summary["groups"]
    generated = generated or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    datasets = ", ".join(summary.get("datasets", [])) or "–"
    lines = ["# Benchmark summary", "",
             f"Generated {generated}. Dataset(s): {datasets}; {summary.get('n_cases', 0)} "
             f"case(s); {len(groups)} group(s).", ""]
    if any(not g["trained"] for g in groups):
        lines += [f"Groups marked **{UNTRAINED_MARK}** ran on random test checkpoints: "
                  "their numbers measure the plumbing, not the method.", ""]
    lines += ["## Groups", "",
              "| group | config | segmenter | detector | paradigm | K | train cases | weights "
              "| ok/skip/fail |", "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        w = group_weights(g)
        lines.append(f"| {_md_name(g)} | `{g['config_hash']}` | {_md(g['segmenter'])} | "
                     f"{_md(g['detector'])} | {g['paradigm']} | "
                     f"{'–' if g['shots'] is None else g['shots']} | "
                     f"{'–' if g['train_cases'] is None else g['train_cases']} | "
                     f"{w} | "
                     f"{g['n_ok']}/{g['n_skipped']}/{g['n_failed']} |")
    lines += ["", "## Accuracy (mean ± sd)", "",
              "NaN-aware: `summary.json` gives n per metric.", "",
              "| group | " + " | ".join(_LABELS[c] for c in cols) + " |",
              "|" + "---|" * (len(cols) + 1)]
    for g in groups:
        name = _md_name(g)
        cells = [fmt_mean_sd(g["metrics"][c], metric_digits(c)) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    main = ("dice", "hd95_mm", "nsd_2mm")
    lines += ["", "## Median [IQR] and 95 % bootstrap CI of the mean", "",
              "| group | " + " | ".join(f"{_LABELS[c]} median [IQR] | {_LABELS[c]} CI"
                                       for c in main) + " |",
              "|" + "---|" * (2 * len(main) + 1)]
    for g in groups:
        cells = []
        for c in main:
            cells += [fmt_median_iqr(g["metrics"][c], metric_digits(c)),
                      fmt_ci(g["metrics"][c], metric_digits(c))]
        lines.append(f"| {_md_name(g)} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "",
              "Model cost from `costs.jsonl` when the runner measured it (warm latency is "
              "the median of the runs); per-case seconds from the case rows. *Pareto*: on "
              "the front of mean Dice against latency.", "",
              "| group | " + " | ".join(COST_HEADERS.values()) + " | Pareto |",
              "|" + "---|" * (len(COST_HEADERS) + 2)]
    for g in groups:
        cc = cost_cells(g)
        lines.append(f"| {_md_name(g)} | " + " | ".join(_md(cc[k]) for k in COST_HEADERS)
                     + f" | {'yes' if g.get('pareto') else ''} |")
    comps = summary.get("comparisons", [])
    if comps:
        lines += ["", "## Paired comparisons (Wilcoxon signed-rank, two-sided)", "",
                  "| A | B | metric | pairs | median A−B | p |", "|---|---|---|---|---|---|"]
        by_label = {g["label"]: g for g in groups}

        def who(label: str) -> str:
            return _md_name(by_label[label]) if label in by_label else _md(label)

        for c in comps:
            md = "–" if c["median_diff"] is None else f"{c['median_diff']:.3f}"
            p = "–" if c["p"] is None else f"{c['p']:.3g}"
            lines.append(f"| {who(c['a'])} | {who(c['b'])} | {c['metric']} | "
                         f"{c['n_pairs']} | {md} | {p} |")
    labels = {g["config_hash"]: g["label"] for g in groups}
    untrained = {g["config_hash"] for g in groups if not g["trained"]}
    lines += ["", "## Per case", "",
              "| case | group | status | Dice | HD95 mm | NSD@2mm | TP/FP/FN | segment s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(latest_rows(rows),
                    key=lambda r: (str(r["case_id"]), labels.get(r["config_hash"], ""))):
        lab = _md(labels.get(r["config_hash"], r["method"]))
        if r["config_hash"] in untrained:
            lab += f" **{UNTRAINED_MARK}**"
        if r.get("status") == "ok":
            tp = "/".join("–" if r.get(k) is None else str(int(r[k])) for k in ("tp", "fp", "fn"))
            lines.append(f"| {_md(r['case_id'])} | {lab} | ok | {fmt_value(r.get('dice'))} | "
                         f"{fmt_value(r.get('hd95_mm'), 1)} | {fmt_value(r.get('nsd_2mm'))} | "
                         f"{tp} | {fmt_value(r.get('segment_s'), 2)} |")
        else:
            err = _md(r.get("error", ""))[:160]
            lines.append(f"| {_md(r['case_id'])} | {lab} | {r.get('status')}: {err} "
                         "| | | | | |")
    lines += ["", "Matching rule, empty-mask conventions and metric definitions: "
              "`autoprompt_seg.bench.metrics` and `docs/bench.md`. Charts and overlays: "
              f"`{REPORT_HTML}`.", ""]
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]],
               first: Sequence[str] = ()) -> None:
    keys: list[str] = list(first)
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
