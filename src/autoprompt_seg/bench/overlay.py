"""Per-case overlay PNGs for the benchmark report: ground truth against prediction.

:func:`save_case_overlay` draws one axial slice, the one with the largest ground-truth area
(the largest predicted area when the ground truth is empty; the middle slice when both are
empty), twice side by side: in a lung window (W 1500 / L -600) and in a mediastinal window
(W 350 / L 40), so that a tumour touching the mediastinum stays visible. Both panels are
cropped to the union of the two masks on that slice plus a margin (at least
:data:`MIN_MARGIN_MM`, and a field of view of at least :data:`MIN_FOV_MM`), shown with the
physical aspect ratio of the pixel spacing. The ground-truth contour is yellow and the
predicted contour cyan (a pair that stays distinct under the common colour-vision
deficiencies), with a legend. The PNG is small (an adaptive 128-colour palette; at most
about 60 KB, :data:`MAX_BYTES`) so that ``report.html`` can embed many of them.

One PNG per case lives at ``OUT/overlays/<config_hash>/<case_id>.png``
(:func:`overlay_path`). Where the image and the masks are at hand, :func:`save_case_overlay`
renders and writes it; a worker process can instead return :func:`render_case_overlay`'s
bytes for the driver to store with :func:`write_overlay`. The HTML report embeds the best,
median and worst case per group.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError

log = logging.getLogger(__name__)

OVERLAYS_DIR = "overlays"
GT_COLOUR = "#ffd400"
PRED_COLOUR = "#00d5ff"
#: (name, width, level) of the two panels.
WINDOWS = (("lung", 1500.0, -600.0), ("mediastinal", 350.0, 40.0))
MIN_MARGIN_MM = 15.0
MIN_FOV_MM = 50.0
PANEL_INCHES = 2.4
DPI = 100
#: Target size of one overlay PNG.
MAX_BYTES = 60_000


def overlay_path(out_dir: str | os.PathLike[str], config_hash: str, case_id: str) -> Path:
    """Where the runner puts a case's overlay: ``OUT/overlays/<config_hash>/<case_id>.png``."""
    return Path(out_dir) / OVERLAYS_DIR / config_hash / f"{case_id}.png"


def _window(hu: npt.NDArray[Any], width: float, level: float) -> npt.NDArray[np.float32]:
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


def pick_slice(gt: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_]) -> int:
    """The axial index with the largest GT area, else the largest predicted area, else the
    middle slice."""
    for m in (gt, pred):
        area = m.sum(axis=(1, 2))
        if area.any():
            return int(np.argmax(area))
    return gt.shape[0] // 2


def _crop(union: npt.NDArray[np.bool_], sy: float, sx: float) -> tuple[slice, slice]:
    """Rows/columns around ``union`` (2-D) with a margin in mm; the whole slice if empty."""
    ny, nx = union.shape
    if not union.any():
        return slice(0, ny), slice(0, nx)
    ys, xs = np.nonzero(union)
    extent_mm = max((ys.max() - ys.min() + 1) * sy, (xs.max() - xs.min() + 1) * sx)
    margin_mm = max(MIN_MARGIN_MM, 0.5 * extent_mm)
    half_mm = max(extent_mm / 2.0 + margin_mm, MIN_FOV_MM / 2.0)  # a square field in mm

    def axis(lo: int, hi: int, n: int, s: float) -> slice:
        c = (lo + hi + 1) / 2.0
        h = half_mm / s
        a, b = int(np.floor(c - h)), int(np.ceil(c + h))
        if b - a >= n:
            return slice(0, n)
        if a < 0:
            a, b = 0, b - a
        if b > n:
            a, b = a - (b - n), n
        return slice(max(a, 0), min(b, n))

    return axis(int(ys.min()), int(ys.max()), ny, sy), axis(int(xs.min()), int(xs.max()), nx, sx)


def _check(name: str, arr: Any, shape: tuple[int, ...] | None) -> npt.NDArray[Any]:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise InputError(f"Argument {name!r} must be a 3-D (z, y, x) array; got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise InputError(f"Argument {name!r} must have the image's shape {shape}; got "
                         f"{a.shape}")
    return a


def render_case_overlay(image: npt.ArrayLike, gt: npt.ArrayLike, pred: npt.ArrayLike,
                        spacing: Sequence[float], *, title: str = "") -> bytes:
    """The overlay PNG (see the module docstring) as bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img = _check("image", image, None)
    g = _check("gt", gt, img.shape).astype(bool, copy=False)
    p = _check("pred", pred, img.shape).astype(bool, copy=False)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"Argument 'spacing' must be three positive numbers (z, y, x) in "
                         f"mm; got {tuple(spacing)!r}")
    _, sy, sx = sp
    k = pick_slice(g, p)
    gs, ps = g[k], p[k]
    ysl, xsl = _crop(gs | ps, sy, sx)
    hu = img[k, ysl, xsl]
    gs, ps = gs[ysl, xsl], ps[ysl, xsl]

    fig = Figure(figsize=(PANEL_INCHES * 2, PANEL_INCHES + 0.45), dpi=DPI, facecolor="black")
    FigureCanvasAgg(fig)
    head = f"{title} · z={k}" if title else f"z={k}"
    if not g.any():
        head += " · empty GT"
    fig.suptitle(head, color="white", fontsize=8, y=0.985)
    for i, (name, width, level) in enumerate(WINDOWS):
        ax = fig.add_axes((i / 2 + 0.005, 0.01, 0.49, 0.82))
        ax.imshow(_window(hu, width, level), cmap="gray", vmin=0, vmax=1, aspect=sy / sx,
                  interpolation="nearest")
        for m, colour in ((gs, GT_COLOUR), (ps, PRED_COLOUR)):
            if m.any() and m.shape[0] > 1 and m.shape[1] > 1:
                ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour],
                           linewidths=1.3)
        ax.set_title(f"{name} window", color="#cccccc", fontsize=7, pad=2)
        ax.set_axis_off()
        if i == 0:
            handles = [Line2D([], [], color=GT_COLOUR, lw=1.5, label="ground truth"),
                       Line2D([], [], color=PRED_COLOUR, lw=1.5, label="prediction")]
            ax.legend(handles=handles, loc="upper left", fontsize=6.5, framealpha=0.6,
                      facecolor="black", labelcolor="white", edgecolor="none")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="black", dpi=DPI)
    return _shrink(buf.getvalue())


def _shrink(png: bytes) -> bytes:
    """The PNG re-encoded with an adaptive palette (128 colours, fewer if still above
    :data:`MAX_BYTES`): CT noise makes a true-colour PNG 2-3 times larger."""
    from PIL import Image

    rgb = Image.open(io.BytesIO(png)).convert("RGB")
    data = png
    for colours in (128, 64, 32):
        buf = io.BytesIO()
        rgb.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(
            buf, format="PNG", optimize=True)
        data = min(data, buf.getvalue(), key=len)
        if len(data) <= MAX_BYTES:
            break
    return data


def write_overlay(path: str | os.PathLike[str], png: bytes) -> Path:
    """Write PNG bytes (from :func:`render_case_overlay`) at ``path`` atomically: a
    temporary file in the same folder (parents created), fsynced, then renamed, so a
    reader never sees half a PNG. For a driver that writes what a worker rendered."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError(f"Argument 'png' must be PNG bytes; got {png[:8]!r}...")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(png)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("wrote %s (%d bytes)", out, len(png))
    return out


def save_case_overlay(image: npt.ArrayLike, gt: npt.ArrayLike, pred: npt.ArrayLike,
                      spacing: Sequence[float], path: str | os.PathLike[str], *,
                      title: str = "") -> Path:
    """Write the overlay PNG of one case at ``path`` (parents created) and return the path.

    ``image`` is the (z, y, x) volume in HU, ``gt`` and ``pred`` boolean masks of the same
    shape, ``spacing`` the (z, y, x) voxel size in mm. The file is written atomically
    (:func:`write_overlay`). Raises :class:`~autoprompt_seg.errors.InputError` on
    mismatched shapes or a bad spacing.
    """
    return write_overlay(path, render_case_overlay(image, gt, pred, spacing, title=title))
