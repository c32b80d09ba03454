"""Model cost: parameters, FLOPs against an analytic count, warm latency, training-free."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoprompt_seg.bench import cost
from autoprompt_seg.bench.runner import BenchConfig, read_rows, run_bench
from autoprompt_seg.config import Settings
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Volume
from test_bench_runner import make_pairs

C_OUT = 2


class _ConvSegmenter:
    """A tiny learned segmenter: one 3x3x3 convolution (1 -> 2 channels, no bias) over the
    whole volume, thresholded inside each box. FLOPs per volume = 2 * 27 * 1 * 2 * voxels
    (a multiply-add counts 2); 54 parameters."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Conv3d(1, C_OUT, 3, padding=1, bias=False)
        torch.nn.init.constant_(self.net.weight, 1.0 / 27)

    def info(self) -> BackendInfo:
        return BackendInfo(name="conv", kind="segmenter", version="test", trained=False,
                           details={"provenance": "untrained test checkpoint"})

    def torch_modules(self) -> dict[str, Any]:
        return {"net": self.net}

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: object = None) -> list[LesionMask]:
        with torch.inference_mode():
            y = self.net(torch.from_numpy(volume.array)[None, None])[0, 0].numpy()
        out = []
        for b in boxes:
            full = np.zeros(volume.shape, bool)
            full[b.slices()] = y[b.slices()] > -300
            out.append(LesionMask.from_full(full, b))
        return out


class _SharingDetector:
    """A detector exposing the segmenter's own module (shared weights) plus its own."""

    def __init__(self, shared: torch.nn.Module) -> None:
        self.shared = shared
        self.own = torch.nn.Linear(3, 4)  # 16 parameters

    def torch_modules(self) -> dict[str, Any]:
        return {"shared": self.shared, "own": self.own}


def _make_conv(settings: Settings) -> _ConvSegmenter:
    return _ConvSegmenter()


def _volume(shape: tuple[int, int, int] = (6, 10, 12)) -> Volume:
    arr = np.random.default_rng(0).normal(-500, 300, shape).astype(np.float32)
    return Volume(array=arr, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                  direction=np.eye(3), source_format="synthetic")


def test_params_count_each_shared_tensor_once() -> None:
    seg = _ConvSegmenter()
    assert cost.count_params(seg) == 54
    assert cost.count_params(seg, _SharingDetector(seg.net)) == 54 + 16
    assert cost.count_params(object()) == 0


def test_gflops_of_one_convolution_match_the_analytic_count() -> None:
    vol = _volume()
    seg = _ConvSegmenter()
    box = Box3D(z0=0, z1=6, y0=0, y1=10, x0=0, x1=12, key_slice=3)
    c = cost.measure(lambda: seg.segment(vol, [box]), [seg], repeats=3)
    voxels = 6 * 10 * 12
    assert c.gflops == pytest.approx(2 * 27 * 1 * C_OUT * voxels / 1e9, rel=0, abs=1e-15)
    assert c.params == 54 and c.cuda_peak_mb is None
    assert len(c.latency_runs) == 3 and c.latency_warm_s == sorted(c.latency_runs)[1]
    assert "thread" in c.device and c.peak_rss_mb > 0
    d = c.to_dict()
    assert d["latency_runs"] == list(c.latency_runs) and d["gflops"] == c.gflops


def test_training_free_backends_have_no_params_and_no_flops() -> None:
    calls = []
    c = cost.measure(lambda: calls.append(1), [object(), object()], repeats=2)
    assert (c.params, c.gflops, c.cuda_peak_mb) == (0, None, None)
    assert len(calls) == 3  # warm-up + 2 timed
    with pytest.raises(ValueError, match="repeats.*0"):
        cost.measure(lambda: None, [], repeats=0)


def test_device_names_the_cpu_and_threads() -> None:
    name = cost.device_name()
    assert name.startswith(cost.cpu_model()) and f"({torch.get_num_threads()} thread" in name


def test_bench_cost_row_of_a_learned_segmenter(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Through run_bench: the costs.jsonl row of the conv segmenter with manual prompts has
    its parameters and the analytic FLOPs of one volume."""
    from autoprompt_seg import registry

    monkeypatch.setattr(registry, "BACKENDS", registry.BACKENDS + (
        registry.BackendSpec(name="conv", kind="segmenter", summary="test",
                             factory=f"{__name__}:_make_conv"),))
    root = make_pairs(tmp_path / "pairs")
    out = tmp_path / "out"
    cfg = BenchConfig(dataset="pairs", dataset_path=str(root), detector="oracle",
                      segmenter="conv", cases=("P01__a", "P02__a"), cost_repeats=1)
    run_bench(cfg, out, settings=Settings())
    rows = read_rows(out / "cases.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["trained"] is False
    (row,) = read_rows(out / "costs.jsonl")
    assert row["params"] == 54 and row["trained"] is False
    assert row["gflops"] == pytest.approx(2 * 27 * C_OUT * 24 * 96 * 96 / 1e9, abs=1e-15)
    assert row["segmenter"] == "conv" and len(row["latency_runs"]) == 1
