"""The bundle's network and detector, built as its ``configs/inference.json`` builds them.

``inference.json`` (model zoo ``lung_nodule_ct_detection``)::

    backbone          = monai.networks.nets.resnet.resnet50(spatial_dims=3, n_input_channels=1,
                            conv1_t_stride=[2,2,1], conv1_t_size=[7,7,7])
    feature_extractor = resnet_fpn_feature_extractor(@backbone, 3, False, [1,2], None)
    network_def       = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3,
                            feature_extractor=@feature_extractor, size_divisible=[16,16,8],
                            use_list_output=False)
    anchor_generator  = AnchorGeneratorWithAnchorShape(feature_map_scales=[1,2,4],
                            base_anchor_shapes=[[6,8,4],[8,6,5],[10,10,6]])
    detector          = RetinaNetDetector(network, anchor_generator, debug=False,
                            spatial_dims=3, num_classes=1, size_divisible=[16,16,8])
    detector_ops:  set_target_keys(box_key='box', label_key='label')
                   set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000,
                                               nms_thresh=0.22, detections_per_img=300)
                   set_sliding_window_inferer(roi_size=[512,512,192], overlap=0.25,
                                              sw_batch_size=1, mode='constant', device='cpu')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SPATIAL_DIMS = 3
NUM_CLASSES = 1
NUM_ANCHORS = 3
SIZE_DIVISIBLE = (16, 16, 8)
FEATURE_MAP_SCALES = (1, 2, 4)
BASE_ANCHOR_SHAPES = ((6, 8, 4), (8, 6, 5), (10, 10, 6))
#: ``infer_patch_size`` of inference.json (x, y, z voxels of the resampled RAS image)
INFER_PATCH_SIZE = (512, 512, 192)
SW_OVERLAP = 0.25


@dataclass(frozen=True)
class BoxSelector:
    """``set_box_selector_parameters`` of inference.json (the bundle's values by default)."""

    score_thresh: float = 0.02
    topk_candidates_per_level: int = 1000
    nms_thresh: float = 0.22
    detections_per_img: int = 300

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"Argument 'score_thresh' must lie in [0, 1); got "
                             f"{self.score_thresh!r}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"Argument 'nms_thresh' must lie in (0, 1]; got "
                             f"{self.nms_thresh!r}")
        for name in ("topk_candidates_per_level", "detections_per_img"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Argument {name!r} must be a positive integer; got {v!r}")


def build_network() -> Any:
    """The bundle's ``network_def``: RetinaNet on a 3-D ResNet50-FPN (random weights)."""
    from monai.apps.detection.networks.retinanet_network import (
        RetinaNet,
        resnet_fpn_feature_extractor,
    )
    from monai.networks.nets.resnet import resnet50

    backbone = resnet50(spatial_dims=SPATIAL_DIMS, n_input_channels=1,
                        conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    feature_extractor = resnet_fpn_feature_extractor(backbone, SPATIAL_DIMS, False, [1, 2], None)
    return RetinaNet(spatial_dims=SPATIAL_DIMS, num_classes=NUM_CLASSES,
                     num_anchors=NUM_ANCHORS, feature_extractor=feature_extractor,
                     size_divisible=list(SIZE_DIVISIBLE), use_list_output=False)


def build_detector(network: Any, selector: BoxSelector | None = None,
                   infer_patch_size: Sequence[int] = INFER_PATCH_SIZE) -> Any:
    """The bundle's ``detector`` with its ``detector_ops`` applied."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    sel = selector or BoxSelector()
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=list(FEATURE_MAP_SCALES),
        base_anchor_shapes=[list(s) for s in BASE_ANCHOR_SHAPES])
    det = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False,
                            spatial_dims=SPATIAL_DIMS, num_classes=NUM_CLASSES,
                            size_divisible=list(SIZE_DIVISIBLE))
    det.set_target_keys(box_key="box", label_key="label")
    det.set_box_selector_parameters(score_thresh=sel.score_thresh,
                                    topk_candidates_per_level=sel.topk_candidates_per_level,
                                    nms_thresh=sel.nms_thresh,
                                    detections_per_img=sel.detections_per_img)
    det.set_sliding_window_inferer(roi_size=list(infer_patch_size), overlap=SW_OVERLAP,
                                   sw_batch_size=1, mode="constant", device="cpu")
    return det
