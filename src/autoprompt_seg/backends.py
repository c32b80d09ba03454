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
