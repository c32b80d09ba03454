"""MedSAM2 / SAM 2.1 model building and checkpoint format: the Hydra config, sam2's
in-memory video predictor, strict loading, the format check registered with
:mod:`autoprompt_seg.weights`, and the checkpoint choice. sam2, Hydra and OmegaConf are
imported lazily, inside the functions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Settings
from ...errors import ConfigError
from ...weights import (
    CheckpointChoice,
    load_state_strict,
    read_torch_file,
    register_checker,
    resolve,
)
from .options import MEDSAM2, POSTPROCESSING_OVERRIDES, SAM2, MedSAM2Options, Variant
from .preprocess import FeatureCache

if TYPE_CHECKING:  # pragma: no cover
    import torch



_BUILD_LOCK = threading.Lock()


# --------------------------------------------------------------------------- model


def config_path(variant: Variant | None = None) -> Path:
    """The model config: the shipped 512-px Hiera-tiny config for MedSAM2, sam2's own
    ``sam2.1_hiera_t.yaml`` for vanilla SAM 2.1."""
    v = variant or MEDSAM2
    return Path(str(resources.files(v.config_package).joinpath(v.config)))


_PREDICTOR_CLASS: type | None = None


def predictor_class() -> type:
    """The in-memory subclass of sam2's legacy video predictor (created on first use)."""
    global _PREDICTOR_CLASS
    if _PREDICTOR_CLASS is not None:
        return _PREDICTOR_CLASS
    from collections import OrderedDict as _OD

    import torch
    from sam2.sam2_video_predictor_legacy import SAM2VideoPredictor

    class InMemoryVideoPredictor(SAM2VideoPredictor):  # type: ignore[misc,valid-type]
        """Legacy sam2 video predictor fed from memory: frames come from a
        :class:`FeatureCache` (no JPEG folder, no per-state image tensor)."""

        def init_state_from_cache(self, cache: FeatureCache, video_height: int,
                                  video_width: int) -> dict[str, Any]:
            """A tracking state over ``cache.frames`` (same keys as ``init_state``)."""
            dev = torch.device(cache.device)
            return {
                "images": None, "feature_cache": cache,
                "num_frames": cache.frames.num_frames,
                "offload_video_to_cpu": False, "offload_state_to_cpu": False,
                "video_height": video_height, "video_width": video_width,
                "device": dev, "storage_device": dev,
                "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
                "cached_features": {}, "constants": {},
                "obj_id_to_idx": _OD(), "obj_idx_to_id": _OD(), "obj_ids": [],
                "output_dict": {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
                "consolidated_frame_inds": {"cond_frame_outputs": set(),
                                            "non_cond_frame_outputs": set()},
                "tracking_has_started": False, "frames_already_tracked": {},
            }

        def _get_image_feature(self, inference_state: dict[str, Any], frame_idx: int,
                               batch_size: int) -> tuple[Any, ...]:
            cache: FeatureCache = inference_state["feature_cache"]
            fpn, pos = cache.get(frame_idx)
            backbone_out = {
                "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in fpn],
                "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in pos],
            }
            features = self._prepare_backbone_features(backbone_out)
            return (None,) + tuple(features)

        @torch.inference_mode()
        def track(self, inference_state: dict[str, Any], start: int, reverse: bool,
                  last: int, empty_stop: int) -> Iterator[tuple[int, torch.Tensor]]:
            """Propagate one object from its prompt on ``start`` towards ``last``
            (inclusive), yielding ``(slice, logits at video resolution (H, W))``; stops
            after ``empty_stop`` consecutive empty slices. Same per-frame steps as
            ``propagate_in_video``."""
            self.propagate_in_video_preflight(inference_state)
            output_dict = inference_state["output_dict"]
            step = -1 if reverse else 1
            empty = 0
            for frame_idx in range(start, last + step, step):
                if frame_idx in output_dict["cond_frame_outputs"]:
                    storage_key = "cond_frame_outputs"
                    current_out = output_dict[storage_key][frame_idx]
                    pred_masks = current_out["pred_masks"]
                else:
                    storage_key = "non_cond_frame_outputs"
                    cache: FeatureCache = inference_state["feature_cache"]
                    if frame_idx not in cache:
                        cache.prefetch(list(range(frame_idx, last + step, step))[:cache.batch])
                    current_out, pred_masks = self._run_single_frame_inference(
                        inference_state=inference_state, output_dict=output_dict,
                        frame_idx=frame_idx, batch_size=1, is_init_cond_frame=False,
                        point_inputs=None, mask_inputs=None, reverse=reverse,
                        run_mem_encoder=True)
                    output_dict[storage_key][frame_idx] = current_out
                self._add_output_per_object(inference_state, frame_idx, current_out,
                                            storage_key)
                inference_state["frames_already_tracked"][frame_idx] = {"reverse": reverse}
                _, video_res = self._get_orig_video_res_output(inference_state, pred_masks)
                logits = video_res[0, 0].float()
                yield frame_idx, logits
                empty = 0 if bool((logits > 0).any()) else empty + 1
                if frame_idx != start and empty >= empty_stop:
                    break

    _PREDICTOR_CLASS = InMemoryVideoPredictor
    return InMemoryVideoPredictor


def build_model(device: str = "cpu", predictor: type | None = None,
                variant: Variant | None = None) -> Any:
    """The Hiera-tiny video predictor (512 px for MedSAM2, 1024 px for ``variant=SAM2``)
    with random weights, in eval mode.

    ``predictor`` defaults to :func:`predictor_class`; the reference procedure of the tests
    passes sam2's stock legacy predictor. Hydra's global state is not touched (the config
    is read with OmegaConf and instantiated directly).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cls = predictor or predictor_class()
    cfg = OmegaConf.load(config_path(variant))
    for key, value in POSTPROCESSING_OVERRIDES.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    cfg.model._target_ = "sam2.sam2_video_predictor_legacy.SAM2VideoPredictor"
    with _BUILD_LOCK:
        # Hydra builds the sub-modules; the predictor class itself is ours (it is created
        # at run time, so Hydra could not locate it by name).
        parts = instantiate(cfg.model, _recursive_=True, _partial_=True)
        model = cls(*parts.args, **parts.keywords)
    return model.to(device).eval()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a MedSAM2 checkpoint file's state dict (``weights_only``: no pickled code).

    Raises :class:`UnavailableError` for a missing, truncated or corrupt file and
    :class:`ConfigError` for a file that is not ``{"model": state_dict}``.
    """
    import torch

    path = Path(path)
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or "model" not in obj:
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"checkpoint {str(path)!r} is not in sam2's checkpoint format: expected a dict "
                          f"with the key 'model' (a state dict); found {found}")
    sd = obj["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"checkpoint {str(path)!r}: 'model' must be a state dict of tensors; "
                          f"got {type(sd).__name__}")
    return dict(sd)


def load_model(path: Path, device: str = "cpu", predictor: type | None = None,
               variant: Variant | None = None) -> Any:
    """Build the model and load ``path`` into it with ``strict=True``."""
    v = variant or MEDSAM2
    sd = read_checkpoint(path)
    model = build_model("cpu", predictor, v)
    load_state_strict(model, sd, f"checkpoint {str(path)!r}",
                      f"the {v.architecture} architecture ({v.label}, sam2.1 Hiera-tiny at "
                      f"{v.image_size} px)")
    return model.to(device).eval()


def check_checkpoint(path: Path, variant: Variant | None = None) -> None:
    """Prove that ``path`` loads strictly into the variant's architecture (MedSAM2 by
    default; used by weights add)."""
    if Path(path).is_dir():
        raise ConfigError(f"weights {str(path)!r} is a folder; a sam2 checkpoint is one "
                          f".pt file")
    load_model(Path(path), "cpu", variant=variant)


def check_medsam2_file(path: Path) -> None:
    """The weights checker of MedSAM2's architecture (:func:`check_checkpoint`)."""
    check_checkpoint(path, MEDSAM2)


def check_sam2_file(path: Path) -> None:
    """The weights checker of plain SAM2.1 Hiera-tiny (:func:`check_checkpoint`)."""
    check_checkpoint(path, SAM2)


register_checker(MEDSAM2.architecture, check_medsam2_file)
register_checker(SAM2.architecture, check_sam2_file)


def sam2_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sam2")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- checkpoint choice


def resolve_checkpoint(settings: Settings, options: MedSAM2Options,
                       variant: Variant | None = None) -> CheckpointChoice:
    """Find the checkpoint: a file path, or a manifest name installed in the weights folder.

    Its provenance comes from :func:`autoprompt_seg.weights.resolve`: a pinned release, an
    official download (hash not pinned) or a user pin count as trained; else a valid
    training record of a run of this model beside the file (trained here, never reported
    as a release); else it is an untrained test checkpoint.
    """
    v = variant or MEDSAM2
    return resolve(v.architecture, options.checkpoint, settings.weights_dir, model=v.name,
                   option=f"{v.name}.checkpoint", label=v.label, record_model=v.name)
