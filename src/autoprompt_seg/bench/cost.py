"""Model cost of one detector + segmenter: parameters, FLOPs, warm latency, memory.

:func:`measure` runs ``run_once`` (one detect + segment of one volume) 1 + ``repeats``
times:

1. a warm-up run (loads lazily built state, fills caches, lets CUDA pick its kernels),
   inside :class:`torch.utils.flop_counter.FlopCounterMode` when the backends hold torch
   modules, which gives ``gflops``;
2. ``repeats`` timed runs (``time.perf_counter``; on CUDA each one is bracketed by
   ``torch.cuda.synchronize()``): ``latency_runs`` and their median ``latency_warm_s``.

Fields of :class:`Cost`:

``params``
    The number of parameters of every ``torch.nn.Module`` the segmenter and the detector
    expose through :func:`autoprompt_seg.backends.torch_modules` (each parameter tensor
    counted once, even when two modules share it). 0 for training-free backends.
``gflops``
    Floating-point operations of the warm-up run, in units of 1e9, as counted by
    ``FlopCounterMode``: a multiply-add counts 2; only the operators torch has a FLOP
    formula for are counted (matrix products, convolutions, attention), so element-wise
    work and anything done outside torch (numpy, scipy) is not. ``None`` when no backend
    holds a torch module (training-free backends) or torch is not installed.
``device``
    ``torch.cuda.get_device_name`` when a module's parameters sit on a CUDA device, else
    the CPU model from ``/proc/cpuinfo`` with the number of threads torch uses (or the
    CPU count when torch was never imported).
``cuda_peak_mb``
    ``torch.cuda.max_memory_allocated`` over the timed runs (the peak statistics are reset
    just before them), in MiB; ``None`` on the CPU.
``peak_rss_mb``
    The process's resident-set high-water mark after the runs (``getrusage``): it also
    covers whatever the process did before, e.g. earlier cases.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..backends import torch_modules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    """One cost measurement (see the module docstring for each field)."""

    device: str
    params: int
    gflops: float | None
    latency_warm_s: float
    latency_runs: tuple[float, ...]
    cuda_peak_mb: float | None
    peak_rss_mb: float

    def __post_init__(self) -> None:
        if not self.latency_runs:
            raise ValueError(f"Argument 'latency_runs' must hold at least one time; got "
                             f"{self.latency_runs!r}")
        object.__setattr__(self, "latency_runs", tuple(float(t) for t in self.latency_runs))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_runs"] = list(self.latency_runs)
        return d


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def modules_of(*backends: object) -> list[Any]:
    """The torch modules of the given backends (:func:`torch_modules`), in order."""
    return [m for b in backends for m in torch_modules(b).values()]


def count_params(*backends: object) -> int:
    """Parameters of every torch module of ``backends``, each tensor counted once."""
    seen: set[int] = set()
    n = 0
    for m in modules_of(*backends):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += int(p.numel())
    return n


def cuda_index(*backends: object) -> int | None:
    """The CUDA device index of the first module parameter on a CUDA device, else None."""
    for m in modules_of(*backends):
        for p in m.parameters():
            if p.device.type == "cuda":
                return int(p.device.index or 0)
    return None


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(cuda: int | None = None) -> str:
    """``torch.cuda.get_device_name(cuda)`` for a CUDA index, else the CPU model and the
    number of threads in use (torch's when torch is imported, else the CPU count)."""
    if cuda is not None:
        import torch

        return str(torch.cuda.get_device_name(cuda))
    if "torch" in sys.modules:
        threads = int(sys.modules["torch"].get_num_threads())
    else:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return f"{cpu_model()} ({threads} thread{'s' if threads != 1 else ''})"


def count_flops(run_once: Callable[[], object]) -> float:
    """GFLOPs of one call of ``run_once`` (``FlopCounterMode``; see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_once()
    return float(counter.get_total_flops()) / 1e9


def measure(run_once: Callable[[], object], backends: Iterable[object], *,
            repeats: int = 3) -> Cost:
    """Warm up once (counting FLOPs), then time ``repeats`` runs of ``run_once``.

    ``backends`` are the detector and segmenter that ``run_once`` uses; their torch modules
    give ``params``, ``gflops`` (none: ``None``) and the device.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"Argument 'repeats' must be an integer >= 1; got {repeats!r}")
    bk = tuple(backends)
    params = count_params(*bk)
    learned = bool(modules_of(*bk))
    cuda = cuda_index(*bk) if learned else None
    gflops: float | None = None
    if learned:
        gflops = count_flops(run_once)  # the warm-up run
    else:
        run_once()
    torch_mod: Any = sys.modules.get("torch") if cuda is not None else None
    if torch_mod is not None:
        torch_mod.cuda.synchronize(cuda)
        torch_mod.cuda.reset_peak_memory_stats(cuda)
    runs: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_once()
        if torch_mod is not None:
            torch_mod.cuda.synchronize(cuda)
        runs.append(time.perf_counter() - t0)
    cuda_peak = (float(torch_mod.cuda.max_memory_allocated(cuda)) / 2**20
                 if torch_mod is not None else None)
    cost = Cost(device=device_name(cuda), params=params, gflops=gflops,
                latency_warm_s=float(statistics.median(runs)), latency_runs=tuple(runs),
                cuda_peak_mb=cuda_peak, peak_rss_mb=peak_rss_mb())
    log.info("cost: %s", cost)
    return cost
