"""Prediction -> preview.png: what a radiologist glances at before opening the SEG.

Layout: one overview panel (a coronal average-intensity projection of the whole study,
windowed like a radiograph, every lesion's projected outline in its colour, numbered), then one panel
per lesion (up to ``max_lesions``): its key slice in a lung window (W 1500 / L -600), the
mask's contour and the prompt box, titled with the volume and the longest diameter. A
study with no lesion shows the overview with "no tumour found".

Images are shown in the series' own grid (the acquisition plane), with physical aspect
ratios; the overview puts the patient's head at the top when the slice normal says where
the head is. Colours match the SEG's segment display colours.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..types import Prediction
from . import lesion_colour, lesion_label
from .report import longest_axial_diameter

log = logging.getLogger(__name__)

WINDOW_WIDTH = 1500.0
WINDOW_LEVEL = -600.0
PANEL_INCHES = 3.6
DPI = 100


def lung_window(hu: npt.NDArray[np.floating[Any]], width: float = WINDOW_WIDTH,
                level: float = WINDOW_LEVEL) -> npt.NDArray[np.float32]:
    """HU -> [0, 1] grey levels in a window of ``width`` around ``level``."""
    if width <= 0:
        raise ValueError(f"Argument 'width' must be positive; got {width!r}")
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


def _rgb(index: int) -> tuple[float, float, float]:
    r, g, b = lesion_colour(index)
    return (r / 255.0, g / 255.0, b / 255.0)


def write_preview(prediction: Prediction, path: str | os.PathLike[str], *,
                  max_lesions: int = 6) -> Path:
    """Write the preview PNG of ``prediction`` at ``path`` and return the path.

    Uses matplotlib's Agg canvas directly (no pyplot, no global state, no display).
    """
    if max_lesions < 0:
        raise ValueError(f"Argument 'max_lesions' must be >= 0; got {max_lesions!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    vol = prediction.volume
    sz, sy, sx = vol.spacing
    lesions = prediction.lesions
    shown = list(enumerate(lesions[:max_lesions], start=1))
    n_panels = 1 + len(shown)
    ncols = min(n_panels, 4)
    nrows = (n_panels + ncols - 1) // ncols
    fig = Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows + 0.4), dpi=DPI,
                 facecolor="black")
    FigureCanvasAgg(fig)
    title = (f"{len(lesions)} lung tumour(s) - {prediction.segmenter.name} / "
             f"{prediction.detector.name}" if lesions else "no tumour found")
    fig.suptitle(title, color="white", fontsize=11)

    # Overview: coronal average-intensity projection over the rows (y), shown like a
    # radiograph (window from its own 1st-99th percentiles: the mean of a chest in a
    # lung window would be almost white).
    ax = fig.add_subplot(nrows, ncols, 1)
    mean = vol.array.mean(axis=1, dtype=np.float32)  # (z, x)
    lo, hi = (float(v) for v in np.percentile(mean, [1.0, 99.0]))
    coronal = lung_window(mean, width=max(hi - lo, 1.0), level=(hi + lo) / 2.0)
    # Head at the top: the slice with the most superior position goes on the top row.
    head_up = vol.direction[2, 2] >= 0  # LPS: +z is superior
    ax.imshow(coronal, cmap="gray", vmin=0, vmax=1, origin="lower" if head_up else "upper", aspect=sz / sx,
              interpolation="bilinear")
    handles = []
    for i, les in enumerate(lesions, start=1):
        proj = np.zeros((vol.shape[0], vol.shape[2]), dtype=np.float32)
        zsl, _ysl, xsl = les.slices()
        proj[zsl, xsl] = les.mask.any(axis=1)
        if proj.any():
            ax.contour(proj, levels=[0.5], colors=[_rgb(i)], linewidths=1.2)
            zc, xc = (float(np.mean(a)) for a in np.nonzero(proj))
            ax.text(xc, zc, str(i), color=_rgb(i), fontsize=9, fontweight="bold",
                    ha="center", va="center")
        handles.append(Patch(color=_rgb(i), label=lesion_label(i)))
    # candidates below the operating point: dashed grey boxes with their rank and confidence
    for rank, b in enumerate(prediction.not_segmented, start=len(lesions) + 1):
        ax.add_patch(Rectangle((b.x0 - 0.5, b.z0 - 0.5), b.x1 - b.x0, b.z1 - b.z0, fill=False,
                               edgecolor="0.6", linewidth=0.7, linestyle=":"))
        ax.text(b.x1, b.z1 if head_up else b.z0, f"#{rank} {b.score:.2f}", color="0.7",
                fontsize=6, ha="left", va="bottom")
    if prediction.not_segmented:
        handles.append(Patch(facecolor="none", edgecolor="0.6", linestyle=":",
                             label=f"not segmented ({len(prediction.not_segmented)})"))
    ax.set_title("overview (coronal mean projection)", color="white", fontsize=8)
    if not lesions:
        ax.text(0.5, 0.5, "no tumour found", color="yellow", fontsize=14, ha="center",
                va="center", transform=ax.transAxes,
                bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "yellow"})
    elif len(handles) <= 10:
        ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.5)
    ax.set_axis_off()

    # One panel per lesion: key slice, contour, prompt box.
    for panel, (i, les) in enumerate(shown, start=2):
        ax = fig.add_subplot(nrows, ncols, panel)
        k = les.box.key_slice
        zsl, ysl, xsl = les.slices()
        if not zsl.start <= k < zsl.stop or not les.mask[k - zsl.start].any():
            # The mask may not reach the prompt's key slice: show its largest slice.
            k = zsl.start + int(np.argmax(les.mask.sum(axis=(1, 2))))
        ax.imshow(lung_window(vol.array[k]), cmap="gray", vmin=0, vmax=1, aspect=sy / sx,
                  interpolation="nearest")
        sl = np.zeros(vol.shape[1:], dtype=np.float32)
        if zsl.start <= k < zsl.stop:
            sl[ysl, xsl] = les.mask[k - zsl.start]
        if sl.any():
            ax.contour(sl, levels=[0.5], colors=[_rgb(i)], linewidths=1.2)
        b = les.box
        ax.add_patch(Rectangle((b.x0 - 0.5, b.y0 - 0.5), b.x1 - b.x0, b.y1 - b.y0,
                               fill=False, edgecolor="yellow", linewidth=0.8, linestyle="--"))
        # Zoom on the lesion with a margin, but never to less than ~60 mm of field.
        margin_y = max(int(30.0 / sy), (b.y1 - b.y0))
        margin_x = max(int(30.0 / sx), (b.x1 - b.x0))
        cy, cx = (b.y0 + b.y1) / 2.0, (b.x0 + b.x1) / 2.0
        ax.set_xlim(max(cx - margin_x, -0.5), min(cx + margin_x, vol.shape[2] - 0.5))
        ax.set_ylim(min(cy + margin_y, vol.shape[1] - 0.5), max(cy - margin_y, -0.5))
        d_mm, _ = longest_axial_diameter(les, vol.spacing)
        vol_ml = les.voxel_count * vol.voxel_volume_ml
        conf = "manual" if les.box.from_person else f"confidence {les.box.score:.2f}"
        ax.set_title(f"#{i} {lesion_label(i)}: slice {k}\n{vol_ml:.1f} ml, {d_mm:.0f} mm, "
                     f"{conf}", color=_rgb(i), fontsize=8)
        ax.set_axis_off()
    if len(lesions) > len(shown):
        fig.text(0.99, 0.01, f"+{len(lesions) - len(shown)} more lesion(s) in report.json",
                 color="white", fontsize=8, ha="right", va="bottom")
    fig.text(0.01, 0.01, "W 1500 / L -600 - not for diagnosis without review", color="gray",
             fontsize=7, ha="left", va="bottom")
    p = Path(path)
    fig.savefig(p, format="png", facecolor=fig.get_facecolor())
    log.debug("preview written: %s", p)
    return p
