"""Export a :class:`~autoprompt_seg.types.Prediction`: DICOM-SEG, NIfTI, report, preview.

* :mod:`.dicom_seg` -- ``build_seg`` (highdicom, BINARY SEG; reading one back is
  :mod:`autoprompt_seg.io.seg`);
* :mod:`.nifti`     -- the label map in source geometry (lesion *i* = *i*);
* :mod:`.report`    -- ``build_report``: a JSON-ready run manifest with measurements;
* :mod:`.preview`   -- ``write_preview``: one PNG a radiologist can glance at;
* :mod:`.writer`    -- ``write_outputs``: all of the above, written atomically.

This package imports nothing heavy at import time; highdicom, SimpleITK and matplotlib
are imported by the functions that need them.
"""

from __future__ import annotations

#: One colour per lesion (RGB 0-255), shared by the SEG display colours and the preview,
#: so that "Lung tumour 2" has the same colour in a viewer and in preview.png.
LESION_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
)

#: File names written by :func:`autoprompt_seg.export.writer.write_outputs`.
SEG_NAME = "seg.dcm"
NIFTI_NAME = "mask.nii.gz"
REPORT_NAME = "report.json"
PREVIEW_NAME = "preview.png"
OUTPUT_NAMES: tuple[str, ...] = (SEG_NAME, NIFTI_NAME, REPORT_NAME, PREVIEW_NAME)


def lesion_label(index: int) -> str:
    """The human-readable label (and tracking ID) of lesion ``index`` (1-based)."""
    if index < 1:
        raise ValueError(f"Argument 'index' must be >= 1 (1-based lesion number); got {index!r}")
    return f"Lung tumour {index}"


def lesion_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour (0-255) of lesion ``index`` (1-based); the palette repeats."""
    if index < 1:
        raise ValueError(f"Argument 'index' must be >= 1 (1-based lesion number); got {index!r}")
    return LESION_COLOURS[(index - 1) % len(LESION_COLOURS)]


__all__ = [
    "LESION_COLOURS",
    "NIFTI_NAME",
    "OUTPUT_NAMES",
    "PREVIEW_NAME",
    "REPORT_NAME",
    "SEG_NAME",
    "lesion_colour",
    "lesion_label",
]
