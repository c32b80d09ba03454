"""One torch-free list of the detectors and segmenters that exist.

Shared by ``--help``, ``autoseg backends`` and the pipeline. Listing imports nothing
heavy: dependencies are probed with :func:`importlib.util.find_spec` and each backend's
module is imported only by :meth:`BackendSpec.create`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .errors import ConfigError, UnavailableError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    kind: str  # "detector" | "segmenter"
    summary: str
    factory: str  # "module:callable" relative to this package, called as f(settings)
    requires: tuple[str, ...] = ()  # importable module names
    weights: tuple[str, ...] = ()  # manifest names of required weights
    traditional: bool = False  # training-free comparison backend
    #: "module:Class" of its frozen options dataclass (``Settings.options[name]``), parsed
    #: by :func:`autoprompt_seg.options.parse_options`; "" = not declared here yet
    options: str = ""

    def missing_dependencies(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def missing_weights(self, settings: Settings) -> list[str]:
        if not self.weights:
            return []
        from .weights import installed_path

        return [w for w in self.weights if installed_path(w, settings.weights_dir) is None]

    def status(self, settings: Settings) -> tuple[str, str]:
        """(state, hint): state is 'ready', 'dependency missing' or 'weights missing'."""
        deps = self.missing_dependencies()
        if deps:
            return "dependency missing", f"pip install {' '.join(deps)}"
        w = self.missing_weights(settings)
        if w:
            from .weights import load_manifest

            m = load_manifest()
            return "weights missing", " ; ".join(
                f"autoseg weights fetch {n}" if n in m and m[n].source
                else f"autoseg weights add FILE --name {n}" for n in w)
        return "ready", ""

    def create(self, settings: Settings) -> Any:
        deps = self.missing_dependencies()
        if deps:
            raise UnavailableError(f"{self.kind} {self.name!r} needs the Python package(s) "
                                   f"{', '.join(deps)}: pip install {' '.join(deps)}")
        mod_name, attr = self.factory.split(":")
        mod = importlib.import_module(mod_name, package=__package__)
        obj = getattr(mod, attr)(settings)
        if self.kind == "detector" and settings.options.get("veto"):
            # the optional anatomy veto (--veto-model) wraps any detector
            veto = importlib.import_module(".models.nnunet.veto", package=__package__)
            obj = veto.wrap(obj, settings)
        return obj


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="candidates", kind="detector",
        summary="training-free, anatomy-aware: soft-tissue candidates in the lung fields, "
                "scored against the airways, mediastinum, heart and great vessels; a "
                "calibrated confidence, one box per lesion on its largest slice",
        factory=".detect.candidates:create", requires=("scipy", "skimage"), traditional=True,
        options=".detect.candidates:CandidatesParams"),
    BackendSpec(
        name="oracle", kind="detector",
        summary="manual prompts: boxes from --prompts JSON or from a ground-truth "
                "RTSTRUCT/SEG/mask (--prompts-from)",
        factory=".detect.oracle:create", requires=("scipy",),
        options=".detect.oracle:OracleOptions"),
    BackendSpec(
        name="nnunet", kind="detector",
        summary="lightweight nnU-Net v2 model: connected components of its tumour "
                "probability, one box per tumour (--detector-model DIR or installed weights)",
        factory=".detect.nnunet:create", requires=("nnunetv2", "torch", "scipy"),
        weights=("nnunet_lung_detector",), options=".models.nnunet.model:NnunetOptions"),
    BackendSpec(
        name="none", kind="detector",
        summary="no prompt: one box covering the whole volume, for the prompt-free "
                "segmenters (nnunet, unet, deeplabv3); their mask is split into lesions",
        factory=".detect.none:create"),
    BackendSpec(
        name="nnunet_fullscan", kind="detector",
        summary="an installed full-resolution nnU-Net model (default TotalSegmentator "
                "lung_nodules, weights totalseg_lung_nodules; others with --detector-model "
                "NAME) run on the lungs' bounding box + 20 mm; its tumour label's components "
                "become boxes",
        factory=".models.nnunet.fullscan:create", requires=("nnunetv2", "torch", "scipy"),
        weights=("totalseg_lung_nodules",),
        options=".models.nnunet.fullscan:FullscanOptions"),
    BackendSpec(
        name="classical", kind="segmenter",
        summary="training-free: box-prompted region growing on the key slice, then slice "
                "by slice in both directions until the tumour ends",
        factory=".segment.classical:create", requires=("scipy", "skimage"), traditional=True,
        options=".segment.classical:ClassicalParams"),
)

BACKENDS += (
    BackendSpec(
        name="medsam2", kind="segmenter",
        summary="MedSAM2 (sam2.1 Hiera-tiny, 512 px): the box prompts the key slice, the mask "
                "is tracked forward and backward through the slices",
        factory=".models.medsam2:create", requires=("torch", "sam2"),
        weights=("MedSAM2_latest",), options=".models.medsam2.options:MedSAM2Options"),
    BackendSpec(
        name="sam2", kind="segmenter",
        summary="vanilla SAM 2.1 (Meta, Hiera-tiny, 1024 px): the same box prompt, tracking "
                "and early stopping as medsam2, without the medical fine-tuning (benchmark)",
        factory=".models.medsam2:create_sam2", requires=("torch", "sam2"),
        weights=("sam2.1_hiera_tiny",), options=".models.medsam2.options:MedSAM2Options"),
    BackendSpec(
        name="nnunet", kind="segmenter",
        summary="nnU-Net v2's own full mask (no prompt): the components overlapping each box",
        factory=".segment.nnunet_seg:create", requires=("nnunetv2", "torch", "scipy"),
        weights=("nnunet_lung_detector",), options=".models.nnunet.model:NnunetOptions"),
)

BACKENDS += (
    BackendSpec(
        name="unet", kind="segmenter",
        summary="2-D U-Net (MONAI), slice by slice at 512 px, no prompt: its mask components "
                "(baseline of the paper; train it with a bench config)",
        factory=".models.cnn2d.segmenter:create_unet", requires=("torch", "monai", "scipy"),
        options=".models.cnn2d.segmenter:Cnn2dOptions"),
    BackendSpec(
        name="deeplabv3", kind="segmenter",
        summary="2-D DeepLabV3 ResNet-50/101 (torchvision), slice by slice at 512 px, no "
                "prompt: its mask components (baseline of the paper)",
        factory=".models.cnn2d.segmenter:create_deeplab", requires=("torch", "torchvision", "scipy"),
        options=".models.cnn2d.segmenter:Cnn2dOptions"),
    BackendSpec(
        name="medsam", kind="segmenter",
        summary="2-D MedSAM (SAM ViT-B, segment-anything): one box per slice; a detector's "
                "3-D box prompts every slice it spans",
        factory=".models.medsam:create", requires=("torch", "segment_anything"),
        weights=("medsam_vit_b",), options=".models.medsam.options:MedSAMOptions"),
)

BACKENDS += (
    BackendSpec(
        name="monai_retinanet", kind="detector",
        summary="MONAI lung_nodule_ct_detection bundle: RetinaNet ResNet50-FPN trained on "
                "LUNA16 nodules; its world boxes on the study's grid, key slice = box centre",
        factory=".models.monai_retinanet.detector:create", requires=("torch", "monai"),
        weights=("monai_lung_nodule_ct_detection",),
        options=".models.monai_retinanet.detector:RetinanetOptions"),
)

DEFAULT_DETECTOR = "candidates"
DEFAULT_SEGMENTER = "classical"


#: option groups that belong to no single backend: ``Settings.options[key]``
EXTRA_OPTIONS: dict[str, str] = {"veto": ".models.nnunet.veto:VetoOptions"}


def options_class(name: str) -> type:
    """The options dataclass of the backend (or option group) ``name``; ConfigError when
    ``name`` is unknown or declares none."""
    refs = {b.name: b.options for b in BACKENDS if b.options}
    refs.update(EXTRA_OPTIONS)
    if name not in refs:
        known = sorted({b.name for b in BACKENDS} | set(EXTRA_OPTIONS))
        if name in known:
            raise ConfigError(f"backend {name!r} declares no options that --set can change "
                              f"(backends with options: {', '.join(sorted(refs))})")
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(known)}")
    mod_name, attr = refs[name].split(":")
    cls: type = getattr(importlib.import_module(mod_name, package=__package__), attr)
    return cls


def names(kind: str) -> list[str]:
    return [b.name for b in BACKENDS if b.kind == kind]


def get(kind: str, name: str) -> BackendSpec:
    for b in BACKENDS:
        if b.kind == kind and b.name == name:
            return b
    raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(names(kind))}")


def checkpoint_options(segmenter: str, ref: str) -> dict[str, Any]:
    """The ``Settings.options`` that make ``segmenter`` load the checkpoint ``ref`` (used
    by ``predict --checkpoint``, ``bench run --checkpoint`` and bench studies)."""
    if segmenter == "nnunet":
        return {"nnunet": {"model_dir": ref}}
    return {segmenter: {"checkpoint": ref}}


def set_options(options: dict[str, Any], assignments: tuple[str, ...] | list[str]
                ) -> dict[str, Any]:
    """``options`` with each ``"backend.key=value"`` laid over it (the CLI's ``--set``): the
    value is read as the type of that field of the backend's options dataclass, so a
    typo in the backend, the key or the value fails here, naming it."""
    from .options import parse_text, split_assignment

    out = dict(options)
    for text in assignments:
        backend, key, value = split_assignment(text)
        typed = parse_text(options_class(backend), backend, key, value)
        cur = out.get(backend)
        if isinstance(cur, str) and backend == "veto":
            cur = {"model": cur}
        out[backend] = {**(dict(cur) if isinstance(cur, dict) else {}), key: typed}
    return out
