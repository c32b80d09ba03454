"""Box jitter that simulates a person drawing a ground-truth box (the benchmark's manual
prompt protocols, :mod:`autoprompt_seg.bench.prompts`, and the trainers' box prompts).

Per box, per axis y and x: the centre moves by ``U(-shift, shift) * size`` and the size is
multiplied by ``U(1 - scale, 1 + scale)``; the result is rounded outwards and clipped to
the image, never smaller than one voxel. The z extent and the key slice are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..types import Box3D


@dataclass(frozen=True)
class Jitter:
    """Box jitter: ``shift`` as a fraction of the box size, ``scale`` a relative size
    change; both in [0, 1)."""

    shift: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        for name in ("shift", "scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= float(v) < 1.0):
                raise ConfigError(f"Argument 'jitter_{name}' must lie in [0, 1); got {v!r}")


def _jitter_range(lo: int, hi: int, n: int, jit: Jitter, rng: np.random.Generator
                  ) -> tuple[int, int]:
    size = hi - lo
    centre = (lo + hi) / 2 + rng.uniform(-jit.shift, jit.shift) * size
    new = size * rng.uniform(1 - jit.scale, 1 + jit.scale)
    a = int(np.floor(centre - new / 2))
    b = int(np.ceil(centre + new / 2))
    a = min(max(a, 0), n - 1)
    b = min(max(b, a + 1), n)
    return a, b


def jitter_box(box: Box3D, shape: tuple[int, int, int], jit: Jitter,
               rng: np.random.Generator) -> Box3D:
    """The box with its (y, x) extent jittered (z extent and key slice kept)."""
    if jit.shift == 0 and jit.scale == 0:
        return box
    y0, y1 = _jitter_range(box.y0, box.y1, shape[1], jit, rng)
    x0, x1 = _jitter_range(box.x0, box.x1, shape[2], jit, rng)
    return Box3D(z0=box.z0, z1=box.z1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=box.key_slice,
                 score=box.score, source=box.source, from_person=True)
