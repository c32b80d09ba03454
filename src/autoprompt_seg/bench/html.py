"""``report.html``: the benchmark report people read, in one self-contained file.

No external URL, no script: charts are matplotlib PNGs (Agg canvas, no pyplot) and the
per-case overlays are the PNGs the runner saved (``overlays/<config_hash>/<case_id>.png``,
see :mod:`.overlay`), all inlined as base64 ``data:`` URIs; styles are inline CSS. Every
piece of text from the results (case ids, labels, error messages, configurations) goes
through :func:`html.escape`.

Sections, in order (their ``id`` in brackets): header with the date, the dataset(s), the
number of cases and every group's configuration [``groups``]; the summary table per group,
every metric as mean ± sd, median [IQR] and 95 % bootstrap CI, then the cost table
[``summary``]; the Dice distributions (box and strip plot) [``distributions``]; mean Dice
against latency with the Pareto front highlighted and labelled [``pareto``]; the paired
Wilcoxon comparisons [``comparisons``]; the best, median and worst case of each group by
Dice [``overlays``]; the per-case table [``cases``]. Groups on random test weights carry
the "UNTRAINED test weights" mark in every table and chart.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import CASE_METRICS
from .overlay import overlay_path
from .report import (
    _LABELS,
    COST_HEADERS,
    UNTRAINED_MARK,
    _num,
    cost_cells,
    fmt_ci,
    fmt_mean_sd,
    fmt_median_iqr,
    fmt_value,
    group_weights,
    latest_rows,
    metric_digits,
)

log = logging.getLogger(__name__)

SECTIONS = ("groups", "summary", "distributions", "pareto", "comparisons", "overlays", "cases")
#: Overlay files larger than this are not inlined (the report would balloon).
MAX_OVERLAY_BYTES = 1_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_UNTRAINED_RGB = "#c62828"
_FRONT_RGB = "#d35400"

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;
margin:24px;color:#1d1d1f;background:#fff;font-size:14px;line-height:1.35}
h1{font-size:24px;margin:0 0 6px}h2{font-size:19px;margin:28px 0 8px;
border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12px}
th,td{border:1px solid #d5d5d5;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.s{color:#555;font-size:11px}.meta{color:#444}
.untrained{color:#fff;background:#c62828;font-weight:bold;padding:0 4px;border-radius:3px;
font-size:11px;white-space:nowrap}
.front{color:#d35400;font-weight:bold}
.ov{display:inline-block;margin:4px 10px 10px 0;vertical-align:top}
.ov img{display:block;max-width:480px;border:1px solid #999}
.none{width:300px;height:120px;border:1px dashed #999;color:#777;display:flex;
align-items:center;justify-content:center}
.wide{overflow-x:auto}.err{color:#a00}code{font-size:12px}
.card{display:inline-block;vertical-align:top;margin:0 14px 8px 0}
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def _mark(g: Mapping[str, Any]) -> str:
    if g.get("trained", True):
        return ""
    return f' <span class="untrained">{_e(UNTRAINED_MARK)}</span>'


def _dice_values(rows: Sequence[Mapping[str, Any]], chash: Any) -> list[float]:
    vals = [_num(r.get("dice")) for r in rows
            if r.get("config_hash") == chash and r.get("status") == "ok"]
    return [v for v in vals if v is not None]


def dice_distribution_png(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
                          ) -> bytes:
    """Horizontal box plot of each group's per-case Dice, with the cases as jittered dots
    (seeded). Untrained groups' labels are red and suffixed "(UNTRAINED)"."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = summary["groups"]
    n = max(len(groups), 1)
    # ``vert`` is deprecated from matplotlib 3.11; ``orientation`` exists from 3.10
    mpl_version = tuple(int(p) for p in matplotlib.__version__.split(".")[:2] if p.isdigit())
    horizontal: dict[str, Any] = ({"orientation": "horizontal"} if mpl_version >= (3, 10)
                                  else {"vert": False})
    fig = Figure(figsize=(9.0, 0.9 + 0.55 * n), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    labels = []
    for i, g in enumerate(groups):
        pos = n - i  # first group at the top
        vals = _dice_values(rows, g["config_hash"])
        labels.append((pos, g["label"] + ("" if g["trained"] else " (UNTRAINED)"),
                       g["trained"]))
        if not vals:
            ax.text(0.5, pos, "no ok case", ha="center", va="center", color="#777",
                    fontsize=9)
            continue
        ax.boxplot([vals], positions=[pos], **horizontal, widths=0.5, showfliers=False,
                   patch_artist=True, boxprops={"facecolor": "#dbe9f6", "edgecolor": "#2f5d8a"},
                   medianprops={"color": "#d35400", "linewidth": 2})
        ax.scatter(vals, pos + rng.uniform(-0.15, 0.15, len(vals)), s=16, color="#1f3b57",
                   alpha=0.75, zorder=3)
        mean = float(np.mean(vals))
        ax.plot([mean], [pos], marker="D", color="#d35400", markersize=5, zorder=4)
    ax.set_yticks([p for p, _, _ in labels], [lab for _, lab, _ in labels], fontsize=8.5)
    for tick, (_, _, trained) in zip(ax.get_yticklabels(), labels, strict=True):
        if not trained:
            tick.set_color(_UNTRAINED_RGB)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0.4, n + 0.6)
    ax.set_xlabel("Dice per case (box: median and IQR; diamond: mean)")
    ax.grid(axis="x", alpha=0.3)
    return _fig_png(fig)


def pareto_png(summary: Mapping[str, Any]) -> bytes | None:
    """Mean Dice (with its 95 % CI) against latency per group; the Pareto-front groups are
    larger orange points joined by a step line and labelled in bold; others are grey with
    a plain label. None when no group has both a latency and a mean Dice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = [(g, float(g["latency_s"]), float(g["metrics"]["dice"]["mean"]))
           for g in summary["groups"]
           if _num(g.get("latency_s")) is not None and g["metrics"]["dice"]["mean"] is not None]
    if not pts:
        return None
    fig = Figure(figsize=(9.0, 5.0), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [x for _, x, _ in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    for g, x, y in pts:
        ci = g["metrics"]["dice"].get("ci95")
        front = bool(g.get("pareto"))
        colour = _FRONT_RGB if front else "#7f8c8d"
        if ci:
            ax.errorbar([x], [y], yerr=[[max(y - ci[0], 0)], [max(ci[1] - y, 0)]],
                        fmt="none", ecolor=colour, alpha=0.6, capsize=3)
        ax.scatter([x], [y], s=90 if front else 40, color=colour, zorder=3,
                   marker="o" if g["trained"] else "X", edgecolors="black" if front else "none")
        text = g["label"] + ("" if g["trained"] else " (UNTRAINED)")
        ax.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8,
                    fontweight="bold" if front else "normal",
                    color=_UNTRAINED_RGB if not g["trained"] else
                    ("#8e3b00" if front else "#555"))
    front_pts = sorted((x, y) for g, x, y in pts if g.get("pareto"))
    if len(front_pts) > 1:
        ax.plot([p[0] for p in front_pts], [p[1] for p in front_pts], drawstyle="steps-post",
                color=_FRONT_RGB, alpha=0.7, lw=1.5, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("latency per volume, s (warm median from costs.jsonl, else per-case "
                  "detect + segment mean)")
    ax.set_ylabel("mean Dice (bars: 95 % bootstrap CI)")
    ax.set_ylim(-0.02, 1.05)
    ax.margins(x=0.25)
    ax.grid(alpha=0.3)
    return _fig_png(fig)


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return f'<div class="none">{_e(alt)}: nothing to plot</div>'
    return f'<img alt="{_e(alt)}" src="{_png_uri(data)}">'


def _config_text(out: Path, chash: str) -> str:
    p = out / "configs" / f"{chash}.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(cfg, dict):
        return ""
    skip = {"config_hash", "method", "mode"}
    parts = [f"{k}={json.dumps(v, default=str)}" for k, v in cfg.items()
             if k not in skip and v not in (None, "", [], {})]
    return ", ".join(parts)


def _overlay_picks(rows: Sequence[Mapping[str, Any]], chash: Any
                   ) -> list[tuple[str, Mapping[str, Any]]]:
    """[(roles, row)]: best, median and worst ok case by Dice (ties by case id); a case
    filling several roles appears once, e.g. "best = median"."""
    ok = sorted((r for r in rows if r.get("config_hash") == chash and r.get("status") == "ok"
                 and _num(r.get("dice")) is not None),
                key=lambda r: (float(r["dice"]), str(r["case_id"])))
    if not ok:
        return []
    picks = [("best", ok[-1]), ("median", ok[(len(ok) - 1) // 2]), ("worst", ok[0])]
    merged: list[tuple[str, Mapping[str, Any]]] = []
    for role, r in picks:
        for i, (roles, r2) in enumerate(merged):
            if r2 is r:
                merged[i] = (f"{roles} = {role}", r2)
                break
        else:
            merged.append((role, r))
    return merged


def _overlay_html(out: Path, role: str, r: Mapping[str, Any]) -> str:
    p = overlay_path(out, str(r["config_hash"]), str(r["case_id"]))
    caption = f"{role}: {r['case_id']} · Dice {fmt_value(r.get('dice'))}"
    data: bytes | None = None
    try:
        if p.is_file() and p.stat().st_size <= MAX_OVERLAY_BYTES:
            data = p.read_bytes()
            if not data.startswith(_PNG_MAGIC):
                log.warning("%s is not a PNG; not shown", p)
                data = None
    except OSError as e:
        log.warning("cannot read %s: %s", p, e)
    if data is None:
        body = '<div class="none">no overlay</div>'
    else:
        body = f'<img alt="{_e(caption)}" src="{_png_uri(data)}">'
    return f'<figure class="ov">{body}<figcaption>{_e(caption)}</figcaption></figure>'


def render_html(out_dir: str | Path, summary: Mapping[str, Any],
                rows: Sequence[dict[str, Any]], *, generated: str = "") -> str:
    """The report as one HTML string (module docstring); ``out_dir`` is where the overlays
    and ``configs/`` are read from."""
    out = Path(out_dir)
    groups = summary["groups"]
    latest = latest_rows(rows)
    labels = {g["config_hash"]: g["label"] for g in groups}
    untrained = {g["config_hash"] for g in groups if not g["trained"]}
    datasets = ", ".join(summary.get("datasets", [])) or "–"
    h: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>autoseg bench report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>autoseg bench report</h1>",
        f'<p class="meta">Generated {_e(generated)} · dataset(s): <b>{_e(datasets)}</b> · '
        f"<b>{int(summary.get('n_cases', 0))}</b> case(s) · <b>{len(groups)}</b> group(s)</p>",
    ]
    if untrained:
        h.append(f'<p><span class="untrained">{_e(UNTRAINED_MARK)}</span> marks groups that '
                 "ran on random test checkpoints: their numbers measure the plumbing, not "
                 "the method.</p>")

    # groups
    h += ['<section id="groups"><h2>Groups and configurations</h2><div class="wide"><table>',
          "<tr><th>group</th><th>config hash</th><th>segmenter</th><th>detector</th>"
          "<th>mode</th><th>paradigm</th><th>K</th><th>train cases</th><th>weights</th>"
          "<th>ok / skipped / failed</th><th>configuration</th></tr>"]
    for g in groups:
        problems = "".join(f'<div class="s err">{_e(cid)}: {_e(str(msg)[:200])}</div>'
                           for cid, msg in list(g.get("problems", {}).items())[:5])
        h.append(
            f"<tr><td><b>{_e(g['label'])}</b>{_mark(g)}</td><td><code>{_e(g['config_hash'])}"
            f"</code></td><td>{_e(g['segmenter'])}</td><td>{_e(g['detector'])}</td>"
            f"<td>{_e(g['mode'])}</td><td>{_e(g['paradigm'])}</td>"
            f"<td>{_e('–' if g['shots'] is None else g['shots'])}</td>"
            f"<td>{_e('–' if g['train_cases'] is None else g['train_cases'])}</td>"
            f"<td>{_e(group_weights(g))}</td>"
            f"<td>{g['n_ok']} / {g['n_skipped']} / {g['n_failed']}{problems}</td>"
            f'<td class="s">{_e(_config_text(out, str(g["config_hash"])))}</td></tr>')
    h.append("</table></div></section>")

    # summary
    h += ['<section id="summary"><h2>Summary per group</h2>',
          "<h3>Overview: mean ± sd over the ok cases</h3>",
          '<div class="wide"><table><tr><th>group</th><th>ok</th>'
          + "".join(f"<th>{_e(_LABELS[m])}</th>" for m in CASE_METRICS) + "</tr>"]
    for g in groups:
        h.append(f"<tr><td><b>{_e(g['label'])}</b>{_mark(g)}</td>"
                 f'<td class="n">{g["n_ok"]}/{g["n_cases"]}</td>'
                 + "".join(f'<td class="n">{_e(fmt_mean_sd(g["metrics"][m], metric_digits(m)))}'
                           "</td>" for m in CASE_METRICS) + "</tr>")
    h += ["</table></div>", "<h3>Each group: mean ± sd, median [IQR], 95 % CI</h3>",
          '<p class="s">The CI is a percentile bootstrap of the mean (2000 resamples, seed 0); '
          "n counts the finite values (NaN, e.g. HD95 of an empty prediction, is left "
          "out).</p>"]
    for g in groups:
        cc = cost_cells(g)
        h.append(f'<div class="card"><table><tr><th colspan="5">{_e(g["label"])}{_mark(g)}'
                 "</th></tr><tr><th>metric</th><th>mean ± sd</th><th>median [IQR]</th>"
                 "<th>95 % CI</th><th>n</th></tr>")
        for m in CASE_METRICS:
            st, d = g["metrics"][m], metric_digits(m)
            h.append(f"<tr><td>{_e(_LABELS[m])}</td><td class=n>{_e(fmt_mean_sd(st, d))}</td>"
                     f"<td class=n>{_e(fmt_median_iqr(st, d))}</td>"
                     f"<td class=n>{_e(fmt_ci(st, d))}</td>"
                     f"<td class=n>{int(st.get('n', 0))}</td></tr>")
        h.append('<tr><th colspan="5">cost</th></tr>')
        for k, name in COST_HEADERS.items():
            h.append(f'<tr><td>{_e(name)}</td><td colspan="4" class=n>{_e(cc[k])}</td></tr>')
        h.append("</table></div>")
    h += ["<h3>Cost</h3>",
          '<p class="s">Model cost from <code>costs.jsonl</code> where the runner measured it '
          "(params, GFLOPs per volume, warm latency as the median of n runs, device, peak "
          "memory); per-case seconds are mean ± sd over the ok cases. Pareto: on the front "
          "of mean Dice against latency.</p>",
          '<div class="wide"><table><tr><th>group</th>'
          + "".join(f"<th>{_e(v)}</th>" for v in COST_HEADERS.values())
          + "<th>Pareto</th></tr>"]
    for g in groups:
        cc = cost_cells(g)
        h.append(f"<tr><td><b>{_e(g['label'])}</b>{_mark(g)}</td>"
                 + "".join(f'<td class="n">{_e(cc[k])}</td>' for k in COST_HEADERS)
                 + f"<td>{'<span class=front>yes</span>' if g.get('pareto') else ''}</td></tr>")
    h.append("</table></div></section>")

    # charts
    h += ['<section id="distributions"><h2>Dice distributions</h2>',
          _img(dice_distribution_png(summary, latest) if groups else None,
               "Dice per case and group"), "</section>"]
    h += ['<section id="pareto"><h2>Accuracy versus latency</h2>',
          _img(pareto_png(summary), "mean Dice against latency"),
          '<p class="s">Pareto front (orange, bold labels): no other group is at least as fast '
          "and at least as accurate. ✕ marks untrained groups.</p>"]
    front = [g["label"] for g in groups if g.get("pareto")]
    h.append(f"<p>On the front: {_e(', '.join(front)) or '–'}</p></section>")

    # comparisons
    h += ['<section id="comparisons"><h2>Paired comparisons (Wilcoxon signed-rank, '
          "two-sided)</h2>"]
    comps = summary.get("comparisons", [])
    if comps:
        h += ["<table><tr><th>A</th><th>B</th><th>metric</th><th>pairs</th>"
              "<th>median A−B</th><th>p</th></tr>"]
        by_label = {g["label"]: g for g in groups}

        def who(label: str) -> str:
            return _e(label) + (_mark(by_label[label]) if label in by_label else "")

        for c in comps:
            md = "–" if c["median_diff"] is None else f"{c['median_diff']:.3f}"
            p = "–" if c["p"] is None else f"{c['p']:.3g}"
            h.append(f"<tr><td>{who(c['a'])}</td><td>{who(c['b'])}</td><td>{_e(c['metric'])}"
                     f'</td><td class="n">{int(c["n_pairs"])}</td><td class="n">{_e(md)}</td>'
                     f'<td class="n">{_e(p)}</td></tr>')
        h.append("</table>")
    else:
        h.append("<p>Only one group: nothing to compare.</p>")
    h.append("</section>")

    # overlays
    h += ['<section id="overlays"><h2>Best, median and worst case per group (by Dice)</h2>',
          '<p class="s">Axial slice with the largest ground-truth area; ground truth yellow, '
          "prediction cyan; lung and mediastinal windows.</p>"]
    for g in groups:
        h.append(f"<h3>{_e(g['label'])}{_mark(g)}</h3>")
        picks = _overlay_picks(latest, g["config_hash"])
        if not picks:
            h.append("<p>No ok case with a Dice value.</p>")
        h += [_overlay_html(out, role, r) for role, r in picks]
    h.append("</section>")

    # per case
    cols = ["dice", "iou", "hd95_mm", "assd_mm", "nsd_2mm", "vol_err_ml", "dice2d",
            "sensitivity", "precision", "f1"]
    h += ['<section id="cases"><h2>Per case</h2><div class="wide"><table>',
          "<tr><th>case</th><th>group</th><th>status</th>"
          + "".join(f"<th>{_e(_LABELS[c])}</th>" for c in cols)
          + "<th>TP/FP/FN</th><th>detect s</th><th>segment s</th></tr>"]
    for r in sorted(latest, key=lambda r: (str(r["case_id"]), labels.get(r["config_hash"], ""))):
        lab = _e(labels.get(r["config_hash"], r.get("method")))
        if r["config_hash"] in untrained:
            lab += f' <span class="untrained">{_e(UNTRAINED_MARK)}</span>'
        if r.get("status") == "ok":
            tp = "/".join("–" if r.get(k) is None else str(int(r[k])) for k in ("tp", "fp", "fn"))
            h.append(f"<tr><td>{_e(r['case_id'])}</td><td>{lab}</td><td>ok</td>"
                     + "".join(f'<td class="n">{_e(fmt_value(r.get(c), metric_digits(c)))}</td>'
                               for c in cols)
                     + f'<td class="n">{_e(tp)}</td>'
                     f'<td class="n">{_e(fmt_value(r.get("detect_s"), 2))}</td>'
                     f'<td class="n">{_e(fmt_value(r.get("segment_s"), 2))}</td></tr>')
        else:
            h.append(f"<tr><td>{_e(r['case_id'])}</td><td>{lab}</td>"
                     f'<td colspan="{len(cols) + 4}" class="err">{_e(r.get("status"))}: '
                     f"{_e(r.get('error', ''))}</td></tr>")
    h += ["</table></div></section>",
          '<p class="s">Metric definitions, the lesion matching rule and empty-mask '
          "conventions: docs/bench.md. Numbers: summary.json, cases.csv, lesions.csv.</p>",
          "</body></html>", ""]
    return "\n".join(h)
