"""The detector and segmenter protocols shared by every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .types import BackendInfo, Box3D, LesionMask, Volume

#: ``progress(done, total)`` — called by long-running backends; may be ``None``.
ProgressFn = Callable[[int, int], None]


@runtime_checkable
class Detector(Protocol):
    """Proposes one :class:`Box3D` per tumour, each with its key slice."""

    def info(self) -> BackendInfo: ...

    def detect(self, volume: Volume, progress: ProgressFn | None = None) -> list[Box3D]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Turns box prompts into one :class:`LesionMask` per box, in the same order.

    All boxes of a study are passed at once so that a backend can share work
    (image features) between lesions and resolve voxels claimed by two lesions.
    An empty mask is allowed; the pipeline drops it with a warning.
    """

    def info(self) -> BackendInfo: ...

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: ProgressFn | None = None) -> list[LesionMask]: ...


@runtime_checkable
class SliceSegmenter(Segmenter, Protocol):
    """A 2-D segmenter that takes one box per slice (MedSAM's protocol).

    ``lesion_slice_boxes[i]`` holds lesion ``i``'s 2-D boxes, each a :class:`Box3D` with
    ``z1 == z0 + 1``; exactly those slices are segmented. One 3-D :class:`LesionMask` per
    lesion comes back (the union of its per-slice masks), in the same order. The benchmark's
    ``every-k`` / ``every-slice`` manual protocols need this method.
    """

    def segment_slices(self, volume: Volume, lesion_slice_boxes: Sequence[Sequence[Box3D]],
                       progress: ProgressFn | None = None) -> list[LesionMask]: ...


def is_promptable(segmenter: object) -> bool:
    """False for segmenters that ignore the box's shape and segment the whole volume
    (nnU-Net, U-Net, DeepLabV3): they set ``promptable = False``."""
    return bool(getattr(segmenter, "promptable", True))


def torch_modules(segmenter: object) -> dict[str, object]:
    """The ``torch.nn.Module`` objects of a learned backend (``{}`` for training-free ones),
    from its optional ``torch_modules()`` method; used for parameter counts."""
    fn = getattr(segmenter, "torch_modules", None)
    return dict(fn()) if callable(fn) else {}
