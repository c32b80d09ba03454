"""The bundle's preprocessing, on our in-memory :class:`~autoprompt_seg.types.Volume`.

``inference.json`` loads the image (``LoadImaged``: channel-first ``(x, y, z)`` array with a
RAS affine), then ``Orientationd(axcodes="RAS")``, ``Spacingd(pixdim=[0.703125, 0.703125,
1.25])``, ``ScaleIntensityRanged(a_min=-1024, a_max=300, b_min=0, b_max=1, clip=True)`` and
``EnsureTyped``. Here the volume becomes the same ``MetaTensor`` that ``LoadImaged`` gives
for a NIfTI of it (array ``(1, x, y, z)``, affine = our LPS affine with x and y negated),
and the very same MONAI dictionary transforms run on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ...types import Volume

PIXDIM = (0.703125, 0.703125, 1.25)  # mm, (x, y, z) of the RAS image
A_MIN, A_MAX = -1024.0, 300.0  # HU window, scaled to 0..1 (clipped)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_affine(volume: Volume) -> npt.NDArray[np.float64]:
    """4x4 matrix from (x, y, z) voxel indices to RAS mm (what NIfTI readers give)."""
    return LPS_TO_RAS @ volume.affine_lps()


def to_metatensor(volume: Volume) -> Any:
    """``(1, x, y, z)`` float32 MetaTensor with the RAS affine, as ``LoadImaged`` +
    ``EnsureChannelFirstd`` produce for the same image."""
    import torch
    from monai.data import MetaTensor

    arr = np.ascontiguousarray(volume.array.transpose(2, 1, 0))[None]
    aff = torch.as_tensor(ras_affine(volume), dtype=torch.float64)
    meta = {"original_affine": aff.clone(),
            "spatial_shape": np.asarray(arr.shape[1:]), "space": "RAS",
            "original_channel_dim": "no_channel"}
    return MetaTensor(torch.from_numpy(arr), affine=aff, meta=meta)


def transforms() -> Any:
    """The bundle's ``preprocessing`` after its loader (``Compose`` of dictionary
    transforms on the key ``"image"``)."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return Compose([
        # labels: MONAI's long-standing default, given explicitly (silences its warning)
        Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys="image", pixdim=list(PIXDIM)),
        ScaleIntensityRanged(keys="image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0,
                             clip=True),
        EnsureTyped(keys="image"),
    ])


def preprocess(volume: Volume) -> Any:
    """The network's input: a ``(1, x, y, z)`` MetaTensor in RAS at the bundle's spacing,
    intensities 0..1; its ``affine`` maps its voxel indices to RAS mm."""
    return transforms()({"image": to_metatensor(volume)})["image"]
