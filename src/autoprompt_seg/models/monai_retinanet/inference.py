"""The bundle's inference on one preprocessed image: the forward pass of its
``RetinaNetInferer`` and its ``postprocessing`` (``ClipBoxToImaged``,
``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``, ``ConvertBoxModed(xyzxyz ->
cccwhd)``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ...errors import BackendError


@dataclass(frozen=True)
class RawDetections:
    """The bundle's detections on one image, best first.

    ``image_boxes``: ``(N, 6)`` ``xyzxyz`` in the preprocessed image's voxel coordinates;
    ``world_boxes``: ``(N, 6)`` ``cccwhd`` in LPS mm (the bundle's saved result);
    ``scores``: ``(N,)``; ``image_affine``: the preprocessed image's RAS affine;
    ``used_sliding_window``: whether the image exceeded the window (512 x 512 x 192).
    """

    image_boxes: npt.NDArray[np.float64]
    world_boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    image_affine: npt.NDArray[np.float64]
    used_sliding_window: bool

    def __post_init__(self) -> None:
        n = len(self.scores)
        for name in ("image_boxes", "world_boxes"):
            a = getattr(self, name)
            if a.shape != (n, 6):
                raise ValueError(f"Argument {name!r} must have shape ({n}, 6); got {a.shape}")


def postprocessing() -> Any:
    """The bundle's ``postprocessing`` Compose, as in its inference.json."""
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToWorldCoordinated,
        ClipBoxToImaged,
        ConvertBoxModed,
    )
    from monai.transforms import Compose, DeleteItemsd

    return Compose([
        ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image",
                        remove_empty=True),
        AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image",
                                    image_meta_key_postfix="meta_dict", affine_lps_to_ras=True),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
        DeleteItemsd(keys=["image"]),
    ])


def run(detector: Any, image: Any, device: str = "cpu", amp: bool = True) -> RawDetections:
    """Detect on one preprocessed ``(1, x, y, z)`` MetaTensor (see :mod:`.preprocess`).

    As the bundle's ``RetinaNetInferer``: the sliding window is used only when the image
    has at least as many voxels as the window. As its evaluator: ``amp`` means CUDA
    autocast (float16); on the CPU the pass runs in float32.
    """
    import torch

    net = detector.network
    net.eval()
    detector.training = False
    roi = getattr(detector.inferer, "roi_size", None)
    window = int(np.prod(roi)) if roi is not None else None
    inputs = [image.to(device)]
    use_inferer = window is not None and not all(x[0, ...].numel() < window for x in inputs)
    ctx = (torch.autocast("cuda") if amp and str(device).startswith("cuda")
           else contextlib.nullcontext())
    try:
        with torch.no_grad(), ctx:
            out = detector(inputs, use_inferer=use_inferer)
    except RuntimeError as e:
        raise BackendError(f"RetinaNet inference failed on an image of shape "
                           f"{tuple(image.shape)}: {str(e)[:300]}") from e
    pred = {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in out[0].items()}
    pred["box"] = pred["box"].float()
    raw_boxes = pred["box"]
    img_cpu = image.detach().cpu() if hasattr(image, "detach") else image
    clipped = _clip(raw_boxes, img_cpu)
    post = postprocessing()({**pred, "image": img_cpu})
    world = np.asarray(post["box"].detach().cpu().double() if hasattr(post["box"], "detach")
                       else post["box"], dtype=np.float64).reshape(-1, 6)
    scores = pred["label_scores"].float().numpy().astype(np.float64)
    if not (len(world) == len(scores) == len(clipped)):
        raise BackendError(f"RetinaNet postprocessing removed boxes ({len(scores)} scores, "
                           f"{len(world)} boxes): the detector gave empty boxes")
    aff = np.asarray(img_cpu.affine, dtype=np.float64)
    return RawDetections(image_boxes=clipped, world_boxes=world, scores=scores,
                         image_affine=aff, used_sliding_window=use_inferer)


def _clip(boxes: Any, image: Any) -> npt.NDArray[np.float64]:
    from monai.data.box_utils import clip_boxes_to_image

    spatial = tuple(int(s) for s in image.shape[1:])
    if len(boxes) == 0:
        return np.zeros((0, 6))
    b, keep = clip_boxes_to_image(boxes, spatial, remove_empty=True)
    return np.asarray(b, dtype=np.float64).reshape(-1, 6)
