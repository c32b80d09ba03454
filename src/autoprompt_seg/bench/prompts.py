"""Manual prompt protocols derived from the ground truth, with seeded jitter.

A "manual" benchmark run simulates a person drawing boxes: boxes come from the GT mask
(one lesion = one 26-connected component, as :func:`autoprompt_seg.detect.oracle.
boxes_from_mask`) and are then jittered.

Protocols
---------
``key-slice``
    One box per lesion: its 3-D bounding box, key slice = the slice of largest area
    (MedSAM2's protocol). Jitter moves and scales the in-plane (y, x) extent only; the z
    extent and key slice are kept.
``every-k``
    Per lesion, a 2-D box (``z1 = z0 + 1``) on every k-th tumour slice, starting at the
    key slice and going both ways (the paper's group used k = 2). A rater draws every k-th
    slice; the tool interpolates in between: :func:`fill_slice_boxes` gives the slices
    between two drawn boxes of a lesion linearly interpolated boxes (the benchmark runner
    does this before calling a segmenter's ``segment_slices``).
``every-slice``
    ``every-k`` with k = 1 (MedSAM's protocol).

Jitter (per box, per axis y and x): the centre moves by ``U(-shift, shift) * size`` and
the size is multiplied by ``U(1 - scale, 1 + scale)``; the result is rounded outwards and
clipped to the image, never smaller than one voxel. The random generator is seeded per
case (:func:`case_seed`), so results do not depend on case order or on resuming. The jitter
itself (:class:`~autoprompt_seg.datasets.jitter.Jitter`, ``jitter_box``) lives in
:mod:`autoprompt_seg.datasets.jitter`, which the trainers use too.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..backends import ProgressFn
from ..datasets.jitter import Jitter, jitter_box
from ..errors import ConfigError
from ..types import BackendInfo, Box3D, Volume

log = logging.getLogger(__name__)

PROTOCOLS = ("key-slice", "every-k", "every-slice")
MULTI_BOX_PROTOCOLS = ("every-k", "every-slice")


@dataclass(frozen=True)
class LesionPrompt:
    """The prompts for one GT lesion: its key box, and the per-slice 2-D boxes of a
    multi-box protocol (empty for ``key-slice``)."""

    lesion: int  # 1-based component index
    key_box: Box3D
    slice_boxes: tuple[Box3D, ...] = ()


def case_seed(seed: int, case_id: str) -> int:
    """A stable per-case seed: ``seed`` mixed with the CRC32 of the case id."""
    return (int(seed) * 1_000_003 + zlib.crc32(case_id.encode("utf-8"))) % (2**32)


def _slice_box(mask2d: npt.NDArray[np.bool_], z: int, source: str) -> Box3D:
    ys, xs = np.nonzero(mask2d)
    return Box3D(z0=z, z1=z + 1, y0=int(ys.min()), y1=int(ys.max()) + 1, x0=int(xs.min()),
                 x1=int(xs.max()) + 1, key_slice=z, source=source, from_person=True)


def gt_prompts(mask: npt.NDArray[np.bool_], protocol: str = "key-slice", *, k: int = 2,
               jitter: Jitter | None = None, seed: int = 0) -> list[LesionPrompt]:
    """Prompts for every GT lesion under ``protocol`` (see the module docstring)."""
    from scipy import ndimage as ndi

    from ..detect.oracle import boxes_from_mask

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--prompt-protocol must be one of {', '.join(PROTOCOLS)}; "
                          f"got {protocol!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"Argument 'k' (slices between boxes) must be an integer >= 1; "
                          f"got {k!r}")
    step = 1 if protocol == "every-slice" else k
    jit = jitter or Jitter()
    m = np.asarray(mask, dtype=bool)
    rng = np.random.default_rng(seed)
    src = f"gt:{protocol}"
    lab, n = ndi.label(m, structure=np.ones((3, 3, 3), bool))
    key_boxes = boxes_from_mask(m, source=src, from_person=True)
    out: list[LesionPrompt] = []
    for box in key_boxes:
        idx = int(lab[box.key_slice][m[box.key_slice] & (lab[box.key_slice] > 0)].flat[0]) \
            if n > 1 else 1
        key = jitter_box(box, m.shape, jit, rng)  # type: ignore[arg-type]
        slices: list[Box3D] = []
        if protocol in MULTI_BOX_PROTOCOLS:
            les = lab == idx
            zs = [z for z in range(box.z0, box.z1) if (z - box.key_slice) % step == 0
                  and les[z].any()]
            for z in zs:
                slices.append(jitter_box(_slice_box(les[z], z, src), m.shape,  # type: ignore[arg-type]
                                         jit, rng))
        out.append(LesionPrompt(idx, key, tuple(slices)))
    return out


class GTPromptDetector:
    """A :class:`~autoprompt_seg.backends.Detector` returning jittered GT key boxes.

    The runner sets :attr:`mask` and :attr:`seed` per case before calling
    :meth:`detect`. Only the ``key-slice`` protocol yields boxes a 3-D segmenter can use;
    for the multi-box protocols :attr:`last` holds each lesion's drawn 2-D boxes, which the
    runner passes (``every-k``: filled by :func:`fill_slice_boxes`) to a
    :class:`~autoprompt_seg.backends.SliceSegmenter`'s ``segment_slices``.
    """

    def __init__(self, protocol: str = "key-slice", jitter: Jitter | None = None,
                 k: int = 2) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"--prompt-protocol must be one of {', '.join(PROTOCOLS)}; "
                              f"got {protocol!r}")
        self.protocol = protocol
        self.jitter = jitter or Jitter()
        self.k = k
        self.mask: npt.NDArray[np.bool_] | None = None
        self.seed = 0
        self.last: list[LesionPrompt] = []

    def info(self) -> BackendInfo:
        return BackendInfo(name="oracle", kind="detector", version="bench",
                           family="Manual prompt (simulated from ground truth)",
                           details={"protocol": self.protocol, "k": self.k,
                                    "jitter_shift": self.jitter.shift,
                                    "jitter_scale": self.jitter.scale})

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]:
        if self.mask is None:
            raise ConfigError("GTPromptDetector.mask must be set to the case's GT before "
                              "detect()")
        self.last = gt_prompts(self.mask, self.protocol, k=self.k, jitter=self.jitter,
                               seed=self.seed)
        if progress is not None:
            progress(1, 1)
        return [p.key_box for p in self.last]


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def fill_slice_boxes(boxes: Sequence[Box3D]) -> list[Box3D]:
    """One lesion's drawn 2-D boxes, completed with one box on every slice between them.

    A rater draws every k-th slice; the tool interpolates in between. For a slice ``z``
    between two consecutive drawn slices ``za < z < zb``, each in-plane coordinate
    (``y0, y1, x0, x1``) is ``(1 - t) * a + t * b`` with ``t = (z - za) / (zb - za)``,
    rounded half up; as both drawn boxes are at least one voxel wide, so is every
    interpolated one. Interpolated boxes have ``key_slice = z``, the lower of the two
    scores, ``source`` = the lower box's source + ``"+interpolated"`` and ``from_person``
    when both drawn boxes have it. Drawn boxes come back unchanged. Only the z-range of the
    drawn boxes is filled (nothing is extrapolated); the result is sorted by slice.

    Raises ``ValueError`` when a box is not 2-D (``z1 != z0 + 1``) or two boxes share a
    slice.
    """
    drawn = sorted(boxes, key=lambda b: b.z0)
    for i, b in enumerate(drawn):
        if b.z1 != b.z0 + 1:
            raise ValueError(f"Argument 'boxes' must hold 2-D boxes (z1 == z0 + 1); got "
                             f"{b.to_dict()}")
        if i and drawn[i - 1].z0 == b.z0:
            raise ValueError(f"Argument 'boxes' holds two boxes on slice {b.z0}")
    out: list[Box3D] = []
    for a, b in zip(drawn, drawn[1:], strict=False):
        out.append(a)
        for z in range(a.z0 + 1, b.z0):
            t = (z - a.z0) / (b.z0 - a.z0)
            y0, y1, x0, x1 = (_round_half_up((1 - t) * u + t * v)
                              for u, v in ((a.y0, b.y0), (a.y1, b.y1), (a.x0, b.x0),
                                           (a.x1, b.x1)))
            out.append(Box3D(z0=z, z1=z + 1, y0=y0, y1=y1, x0=x0, x1=x1, key_slice=z,
                             score=min(a.score, b.score), source=f"{a.source}+interpolated",
                             from_person=a.from_person and b.from_person))
    if drawn:
        out.append(drawn[-1])
    return out


def flatten_slice_boxes(prompts: Sequence[LesionPrompt]) -> list[Box3D]:
    """All per-slice boxes of a multi-box protocol, lesion by lesion."""
    return [b for p in prompts for b in p.slice_boxes]
