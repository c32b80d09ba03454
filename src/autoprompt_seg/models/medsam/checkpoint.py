"""MedSAM / SAM ViT-B checkpoint format: building the model, strict loading, the format
check registered with :mod:`autoprompt_seg.weights`, the encoder fingerprint and embedding
keys, and the checkpoint choice. segment_anything is imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...config import Settings
from ...errors import ConfigError, UnavailableError
from ...weights import (
    CheckpointChoice,
    load_state_strict,
    read_torch_file,
    register_checker,
    resolve,
)
from .options import ARCHITECTURE, NAME, MedSAMOptions

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    pass



# --------------------------------------------------------------------------- model


def encoder_fingerprint(sam: Any) -> str:
    """sha256 of the image encoder's weights (names, shapes, bytes): the key under which
    embeddings are cached (an encoder is frozen, so its embeddings never change)."""
    h = hashlib.sha256()
    for k, v in sorted(sam.image_encoder.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def embedding_key(fingerprint: str, preprocess: str, u8: npt.NDArray[np.uint8]) -> str:
    h = hashlib.sha256()
    h.update(f"{fingerprint}:{preprocess}:{u8.shape}\0".encode())
    h.update(np.ascontiguousarray(u8).tobytes())
    return h.hexdigest()[:40]




def build_model(device: str = "cpu") -> Any:
    """SAM ViT-B from ``segment_anything`` with random weights, in eval mode."""
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:  # pragma: no cover - registry checks find_spec first
        raise UnavailableError(f"the medsam segmenter needs the Python package "
                               f"segment-anything ({e})") from e
    return sam_model_registry["vit_b"]().to(device).eval()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A MedSAM checkpoint's state dict (``weights_only``: no pickled code).

    Accepts a plain state dict (``medsam_vit_b.pth``) or MedSAM's training checkpoint
    ``{"model": state_dict, ...}``. :class:`UnavailableError` for a missing, truncated or
    corrupt file; :class:`ConfigError` for a file that holds something else."""
    import torch

    path = Path(path)
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        found = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConfigError(f"checkpoint {str(path)!r} is not in MedSAM's format: expected a SAM "
                          f"ViT-B state dict (name -> tensor); found {found}")
    return dict(obj)


def load_model(path: Path, device: str = "cpu") -> Any:
    """Build SAM ViT-B and load ``path`` into it with ``strict=True``, in eval mode (the
    one strict load of a MedSAM checkpoint; :func:`check_checkpoint` uses it too)."""
    sd = read_checkpoint(path)
    model = build_model("cpu")
    load_state_strict(model, sd, f"checkpoint {str(path)!r}",
                      "the SAM ViT-B architecture (MedSAM)")
    return model.to(device).eval()


def check_checkpoint(path: Path) -> None:
    """Prove that ``path`` is MedSAM's ``medsam_vit_b.pth`` format (``weights add``/
    ``fetch``/``verify``): a strict load (:func:`load_model`) when the ``segment_anything``
    package is installed, else a check of the SAM ViT-B keys and shapes."""
    import importlib.util

    if importlib.util.find_spec("segment_anything") is not None:
        load_model(Path(path), "cpu")
        return
    sd = read_checkpoint(Path(path))
    pe = sd.get("image_encoder.patch_embed.proj.weight")
    ok = (pe is not None and tuple(pe.shape) == (768, 3, 16, 16)
          and "image_encoder.blocks.11.attn.qkv.weight" in sd
          and "image_encoder.blocks.12.attn.qkv.weight" not in sd
          and any(k.startswith("mask_decoder.") for k in sd)
          and any(k.startswith("prompt_encoder.") for k in sd))
    if not ok:
        raise ConfigError(f"weights file {str(path)!r} does not fit the SAM ViT-B "
                          f"architecture (patch embedding, 12 blocks, prompt encoder and "
                          f"mask decoder expected)")
    log.info("%s: ViT-B keys and shapes checked (segment_anything not installed for a "
             "strict load)", path)


register_checker(ARCHITECTURE, check_checkpoint)


def segment_anything_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segment-anything")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- checkpoint choice


def resolve_checkpoint(settings: Settings, options: MedSAMOptions) -> CheckpointChoice:
    """Find the checkpoint (a file path, or a manifest name installed in the weights folder)
    and decide its provenance (:func:`autoprompt_seg.weights.resolve`): a pinned release,
    an official download, a user pin, a valid training record beside the file, else an
    untrained test checkpoint."""
    return resolve(ARCHITECTURE, options.checkpoint, settings.weights_dir, model=NAME,
                   option="medsam.checkpoint", label="MedSAM")
