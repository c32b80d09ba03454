"""report.html: self-contained, every section and group present, text escaped, overlays
inlined, and it renders in headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoprompt_seg.bench.html import SECTIONS
from autoprompt_seg.bench.metrics import CASE_METRICS
from autoprompt_seg.bench.outputs import write_outputs
from autoprompt_seg.bench.overlay import overlay_path, save_case_overlay
from autoprompt_seg.bench.report import REPORT_HTML, UNTRAINED_MARK

EVIL = "<script>alert('x')</script> & \"quoted\""


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k == "id" and v:
                self.ids.append(v)
            if k in ("src", "href", "action", "poster", "data") and v is not None:
                self.urls.append((tag, k, v))
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _row(h: str, case: str, method: str, mode: str, dice: float, **kw: Any) -> dict[str, Any]:
    r = {"config_hash": h, "case_id": case, "patient_id": case, "dataset": "synthetic",
         "method": method, "detector": method.split("+")[1], "segmenter": method.split("+")[0],
         "mode": mode, "status": "ok", "error": "", "trained": True,
         **{m: 0.5 for m in CASE_METRICS}, "dice": dice, "hd95_mm": 10 * (1 - dice),
         "tp": 1, "fp": 0, "fn": 0, "detect_s": 0.2, "segment_s": 0.5, "peak_rss_mb": 300.0}
    r.update(kw)
    return r


def _ball(shape: tuple[int, int, int], c: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r ** 2


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder: 3 groups (one few-shot on untrained weights), 4 cases, a failed
    case whose error holds markup, costs for one group, overlays for one group's cases."""
    out = tmp_path_factory.mktemp("bench")
    rows = []
    for i, d in enumerate((0.81, 0.52, 0.67, 0.12)):
        rows.append(_row("aaaaaaaaaaaa", f"case{i}", "classical+candidates", "auto", d))
        rows.append(_row("bbbbbbbbbbbb", f"case{i}", "classical+oracle", "manual:key-slice",
                         min(d + 0.15, 1.0), detect_s=0.0, segment_s=0.3))
        rows.append(_row("cccccccccccc", f"case{i}", "unet+none", "auto", d / 2,
                         paradigm="few-shot", shots=3, train_cases=3, trained=False))
    rows.append({**_row("aaaaaaaaaaaa", "case<4>", "classical+candidates", "auto", 0.0),
                 "status": "failed", "error": EVIL})
    (out / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "costs.jsonl").write_text(json.dumps(
        {"config_hash": "cccccccccccc", "method": "unet+none", "mode": "auto",
         "paradigm": "few-shot", "shots": 3, "device": "cpu", "params": 7_760_000,
         "gflops": 54.3, "latency_warm_s": 1.5, "latency_runs": [1.6, 1.5, 1.4],
         "cuda_peak_mb": None, "peak_rss_mb": 900.0}) + "\n")
    (out / "configs").mkdir()
    (out / "configs" / "aaaaaaaaaaaa.json").write_text(json.dumps(
        {"dataset": "synthetic", "detector": "candidates", "segmenter": "classical",
         "seed": 0, "config_hash": "aaaaaaaaaaaa"}))
    rng = np.random.default_rng(1)
    shape = (16, 96, 96)
    for i in range(4):  # overlays for group a only: b and c show "no overlay"
        image = rng.normal(-750, 150, size=shape).astype(np.float32)
        gt = _ball(shape, (8, 40 + 3 * i, 50), 7)
        image[gt] = 20.0
        pred = _ball(shape, (8, 42 + 3 * i, 52 + i), 6)
        save_case_overlay(image, gt, pred, (2.5, 0.9, 0.9),
                          overlay_path(out, "aaaaaaaaaaaa", f"case{i}"), title=f"case{i}")
    write_outputs(out)
    return out


def test_html_is_self_contained_with_every_section_and_group(results: Path) -> None:
    text = (results / REPORT_HTML).read_text(encoding="utf-8")
    summary = json.loads((results / "summary.json").read_text())
    p = _Collect()
    p.feed(text)
    body = " ".join(p.text)
    for section in SECTIONS:
        assert section in p.ids, section
    labels = [g["label"] for g in summary["groups"]]
    assert labels == ["classical+candidates · auto · zero-shot",
                      "classical+oracle · manual:key-slice · zero-shot",
                      "unet+none · auto · few-shot K=3"]
    for label in labels:
        assert body.count(label) >= 4, label  # groups, summary, cost, overlays, per case...
    assert UNTRAINED_MARK in body
    # no script, no external resource: every URL is an inline image
    assert "script" not in p.tags and "link" not in p.tags
    assert p.urls and all(tag == "img" and v.startswith("data:image/png;base64,")
                          for tag, _, v in p.urls)
    assert "http://" not in text and "https://" not in text
    # the failed case's error is shown as text, escaped
    assert EVIL in body and "<script>" not in text
    assert "case<4>" in body
    # 2 charts + overlays of group a's best (case0), median (case1: the lower of the two
    # middle cases) and worst (case3)
    assert len(p.imgs) == 5
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in p.imgs}
    for case in ("case0", "case1", "case3"):
        assert overlay_path(results, "aaaaaaaaaaaa", case).read_bytes() in inlined
    assert overlay_path(results, "aaaaaaaaaaaa", "case2").read_bytes() not in inlined
    assert "best: case0 · Dice 0.810" in body and "worst: case3 · Dice 0.120" in body
    assert body.count("no overlay") == 6  # groups b and c: best, median, worst each
    for key in ("Dice", "HD95 mm", "NSD@2mm", "Dice2D", "Sens", "Prec", "F1", "median [IQR]",
                "95 % CI", "GFLOPs/volume", "7.76 M", "54.3", "1.5 (n=3)"):
        assert key in body, key
    assert "Pareto" in body and "On the front:" in body


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="no chromium or chromium-browser on PATH (CI installs Debian's "
                           "chromium: apt-get install chromium)")
def test_report_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    exe = _chromium()
    assert exe is not None
    proc = subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2000", (results / REPORT_HTML).resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    im = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert im.shape == (2000, 1280)
    assert im.std() > 20, "the screenshot is blank"
    dark = im < 128
    assert dark.mean() > 0.02  # text, tables and charts
    # content reaches the bottom of the window (the page is longer than 2000 px)
    assert dark[-400:].mean() > 0.005
