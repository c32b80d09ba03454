"""Datasets: cases (an image plus its ground-truth tumour mask), the dataset layouts that
list them, seeded patient-level splits, and the box jitter that simulates a person's box.

This layer sits below both the benchmark (:mod:`autoprompt_seg.bench`) and the trainers
(:mod:`autoprompt_seg.train`), which import it and never each other's data code. The
ground-truth files themselves are read by :mod:`autoprompt_seg.io` (RTSTRUCT, DICOM-SEG,
mask images).

Modules: :mod:`.cases` (:class:`Case`, :func:`load_case`), :mod:`.layouts` (``pycerr``,
``nsclc``, ``msd``, ``pairs``; :func:`get_cases`), :mod:`.splits` (:func:`make_splits`,
:func:`save_splits`, :func:`load_splits`), :mod:`.jitter` (:class:`Jitter`,
:func:`jitter_box`).
"""

from __future__ import annotations

from .cases import Case, Mask, load_case
from .jitter import Jitter, jitter_box
from .layouts import (
    DATASETS,
    DEFAULT_ROI,
    GEOMETRY_TOL,
    get_cases,
    msd_cases,
    nsclc_cases,
    pairs_cases,
    pycerr_cases,
)
from .splits import load_splits, make_splits, save_splits

__all__ = ["DATASETS", "DEFAULT_ROI", "GEOMETRY_TOL", "Case", "Jitter", "Mask", "get_cases",
           "jitter_box", "load_case", "load_splits", "make_splits", "msd_cases",
           "nsclc_cases", "pairs_cases", "pycerr_cases", "save_splits"]
