"""Helpers for the nnU-Net detector tests: tiny synthetic volumes, tiny plans, model folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from autoprompt_seg.synthetic import SyntheticChest, synthetic_chest
from autoprompt_seg.types import Volume

#: Tiny synthetic chests: 24 x 48 x 48 voxels of 4 mm (96 x 192 x 192 mm), two tumours.
TINY_SHAPE = (24, 48, 48)
TINY_SPACING = (4.0, 4.0, 4.0)
TINY_RADII = (12.0, 10.0)

DATASET_JSON: dict[str, Any] = {"channel_names": {"0": "CT"},
                                "labels": {"background": 0, "tumour": 1},
                                "numTraining": 6, "file_ending": ".nii.gz"}

_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4, "features_per_stage": [8, 16, 32, 64],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [1, 1, 1],
        "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

#: What AutosegDetectorPlanner plans for the tiny chests (base 8, max 64 features, 4 stages),
#: copied from a planner run; the patch (24, 48, 48) is smaller than a 2x upsampled input,
#: so sliding windows and resampling are both exercised.
TINY_PLANS: dict[str, Any] = {
    "dataset_name": "Dataset901_AutosegLungDetector",
    "plans_name": "nnUNetPlans_autosegDetector",
    "original_median_spacing_after_transp": [4.0, 4.0, 4.0],
    "original_median_shape_after_transp": [24, 48, 48],
    "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {"3d_detector": {
        "data_identifier": "nnUNetPlans_autosegDetector_3d_detector",
        "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [24, 48, 48], "median_image_size_in_voxels": [24.0, 48.0, 48.0],
        "spacing": [4.0, 4.0, 4.0], "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": _ARCH, "batch_dice": False}},
    "experiment_planner_used": "AutosegDetectorPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {
        "max": 81.4, "mean": 30.7, "median": 31.6, "min": -25.4, "percentile_00_5": -15.6,
        "percentile_99_5": 71.2, "std": 17.3}},
}


def tiny_chest(seed: int) -> SyntheticChest:
    return synthetic_chest(TINY_SHAPE, TINY_SPACING, n_tumours=2, seed=seed,
                           tumour_radius_mm=list(TINY_RADII))


def volume_of(chest: SyntheticChest, direction: np.ndarray | None = None) -> Volume:
    return Volume(array=chest.hu, spacing=chest.spacing, origin=(-96.0, -96.0, -48.0),
                  direction=np.eye(3) if direction is None else direction,
                  source_format="synthetic")


def write_msd_dataset(root: Path, seeds: list[int]) -> Path:
    """A MSD-Task06-like folder (imagesTr, labelsTr, dataset.json) of tiny chests."""
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, seed in enumerate(seeds):
        c = tiny_chest(seed)
        for arr, p in ((c.hu, root / "imagesTr" / f"lung_{i:03d}.nii.gz"),
                       (c.labels, root / "labelsTr" / f"lung_{i:03d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(TINY_SPACING[::-1])
            sitk.WriteImage(im, str(p))
    (root / "dataset.json").write_text(json.dumps({"name": "Task06_Lung (synthetic stand-in)",
                                                   "modality": {"0": "CT"},
                                                   "labels": {"0": "background",
                                                              "1": "cancer"}}))
    return root


def random_tiny_model(out: Path, seed: int = 0, foreground_bias: float = 0.0,
                      fold: int | str = 0) -> Path:
    """A random-weight model folder with the tiny plans."""
    from autoprompt_seg.models.nnunet.train import random_model_folder

    return random_model_folder(out, copy.deepcopy(TINY_PLANS), "3d_detector",
                               dict(DATASET_JSON), seed=seed, fold=fold,
                               foreground_bias=foreground_bias)


def register_backends(monkeypatch: Any) -> None:
    """Add the nnunet detector and segmenter to the registry (what cli/registry will hold)."""
    from autoprompt_seg import registry
    from autoprompt_seg.registry import BackendSpec

    have = {(b.kind, b.name) for b in registry.BACKENDS}
    extra = []
    if ("detector", "nnunet") not in have:
        extra.append(BackendSpec(
            name="nnunet", kind="detector",
            summary="lightweight nnU-Net v2 model: connected components of its tumour "
                    "probability, one box per tumour",
            factory=".detect.nnunet:create", requires=("nnunetv2", "torch", "scipy"),
            weights=("nnunet_lung_detector",)))
    if ("segmenter", "nnunet") not in have:
        extra.append(BackendSpec(
            name="nnunet", kind="segmenter",
            summary="nnU-Net v2's own full mask (no prompt): the components overlapping "
                    "each box",
            factory=".segment.nnunet_seg:create", requires=("nnunetv2", "torch", "scipy"),
            weights=("nnunet_lung_detector",)))
    monkeypatch.setattr(registry, "BACKENDS", registry.BACKENDS + tuple(extra))
