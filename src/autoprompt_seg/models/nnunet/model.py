"""Shared nnU-Net v2 model loading and inference for the ``nnunet`` detector and segmenter.

Model folder
------------
A trained nnU-Net v2 model folder holds ``dataset.json``, ``plans.json`` and
``fold_X/checkpoint_final.pth`` (X = 0..4 or ``all``). The folder comes from
``Settings.options["nnunet"]["model_dir"]`` (the CLI's ``--detector-model DIR``) or, by
default, from the weights folder entry ``nnunet_lung_detector``
(``settings.weights_dir / "nnunet_lung_detector"``). ``model_dir`` may also be nnU-Net's
*dataset* results folder holding ``TRAINER__PLANS__CONFIGURATION`` sub-folders; then
``configuration`` picks the sub-folder.

nnU-Net stores the configuration of a model inside its checkpoint (``init_args``), and
``nnUNetPredictor.initialize_from_trained_model_folder`` always uses that one. So the
``configuration`` option *selects* a sub-folder (or is checked against the checkpoint): a
mismatch is a :class:`ConfigError`, never a silent switch.

Environment
-----------
Nothing here reads or writes ``nnUNet_*`` environment variables. nnunetv2 2.8.1 reads
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` lazily (``nnunetv2.paths``
holds ``_EnvPath`` objects that look the variable up only when a path is used), so importing
it and running inference from a model folder needs none of them and prints no warning.

Axes and spacing for ``numpy`` input
------------------------------------
nnU-Net's default reader for NIfTI/DICOM-derived images (``SimpleITKIO``) hands the network
the array of ``sitk.GetArrayFromImage`` (axes ``(z, y, x)``, channel first: ``(c, z, y, x)``)
and the spacing *reversed* from SimpleITK's ``(sx, sy, sz)`` to ``(sz, sy, sx)``. Our
:class:`~autoprompt_seg.types.Volume` already is ``(z, y, x)`` with spacing ``(sz, sy, sx)``,
so the input is ``volume.array[None]`` with ``{"spacing": [sz, sy, sx]}``, after the
orientation step below.

Orientation
-----------
nnU-Net does not reorient images: a model only works on arrays laid out like its training
data. Both :mod:`autoprompt_seg.models.nnunet.train` (when it writes training images) and this
module (at inference) therefore put every volume in one *canonical* layout by axis
permutation and flips only (no interpolation): array axes ``(z, y, x)`` pointing as close as
possible to LPS ``(S, P, L)``, i.e. a plain axial DICOM series as loaded. Results are mapped
back exactly. For an axial series the step is the identity.

Security: nnU-Net loads checkpoints with ``torch.load(weights_only=False)`` (a pickle). Every
checkpoint is first read with ``weights_only=True`` (:func:`autoprompt_seg.weights.check_fits`)
so a file that would run code when unpickled is refused before nnU-Net sees it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...config import Settings, resolve_device
from ...errors import BackendError, ConfigError, UnavailableError
from ...types import Volume

log = logging.getLogger(__name__)

WEIGHTS_NAME = "nnunet_lung_detector"
OPTIONS_KEY = "nnunet"
CHECKPOINT = "checkpoint_final.pth"
UNTRAINED = "untrained test checkpoint"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class NnunetOptions:
    """``Settings.options["nnunet"]``: every key is optional."""

    model_dir: Path | None = field(default=None, metadata={
        "help": "model folder (default: weights_dir/nnunet_lung_detector)"})
    configuration: str | None = field(default=None, metadata={
        "help": "nnU-Net configuration (default: the checkpoint's own)"})
    folds: tuple[int | str, ...] | None = field(default=None, metadata={
        "help": "fold numbers or 'all' (default: every fold_X with a final checkpoint)"})
    tta: bool = field(default=False, metadata={"help": "nnU-Net's mirroring test-time "
                                               "augmentation"})
    tile_step_size: float = field(default=0.5, metadata={
        "help": "sliding-window step, fraction of the patch"})
    threshold: float = field(default=0.5, metadata={
        "help": "foreground probability for detector components"})
    min_volume_ml: float = field(default=0.1, metadata={"help": "ml; smaller components "
                                                         "are dropped"})
    margin_mm: float = field(default=2.0, metadata={"help": "mm added around each box"})
    merge_overlapping: bool = field(default=True, metadata={"help": "merge overlapping "
                                                            "boxes"})

    def __post_init__(self) -> None:
        if self.configuration is not None and not self.configuration:
            raise ConfigError(f"Option 'nnunet.configuration' must be a non-empty string; "
                              f"got {self.configuration!r}")
        for name, lo, hi, lo_open in (("threshold", 0.0, 1.0, True),
                                      ("tile_step_size", 0.0, 1.0, True),
                                      ("min_volume_ml", 0.0, float("inf"), False),
                                      ("margin_mm", 0.0, float("inf"), False)):
            v = getattr(self, name)
            if not ((v > lo if lo_open else v >= lo) and v <= hi):
                rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
                raise ConfigError(f"Option 'nnunet.{name}' must be a number in {rng}; "
                                  f"got {v!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> NnunetOptions:
        from ...options import parse_options

        raw = settings.options.get(OPTIONS_KEY)
        if isinstance(raw, Mapping):
            # None means "the default" for these keys; folds may be one fold or a list
            raw = {k: v for k, v in raw.items()
                   if v is not None or k not in ("model_dir", "configuration", "folds")}
            if "folds" in raw:
                raw["folds"] = _parse_folds(raw["folds"])
        return parse_options(cls, raw, OPTIONS_KEY)


def _parse_folds(v: object) -> tuple[int | str, ...]:
    items = v if isinstance(v, (list, tuple)) else [v]
    out: list[int | str] = []
    for f in items:
        if isinstance(f, bool):
            raise ConfigError(f"Option 'nnunet.folds' must list fold numbers or 'all'; got {v!r}")
        if isinstance(f, int) and f >= 0:
            out.append(int(f))
        elif isinstance(f, str) and f == "all":
            out.append("all")
        elif isinstance(f, str) and f.isdigit():
            out.append(int(f))
        else:
            raise ConfigError(f"Option 'nnunet.folds' must list fold numbers or 'all'; got {v!r}")
    if not out:
        raise ConfigError(f"Option 'nnunet.folds' must not be empty; got {v!r}")
    return tuple(out)


# ----------------------------------------------------------------------- model folder


@dataclass(frozen=True)
class ModelFolder:
    """A checked nnU-Net v2 model folder."""

    path: Path
    configuration: str
    folds: tuple[int | str, ...]
    trainer_name: str
    checkpoints: tuple[Path, ...]


def default_model_dir(settings: Settings) -> Path:
    """Where the manifest entry ``nnunet_lung_detector`` lives in the weights folder."""
    from ...weights import load_manifest

    entry = load_manifest().get(WEIGHTS_NAME)
    name = entry.file if entry is not None else WEIGHTS_NAME
    return Path(settings.weights_dir) / name


def _read_json(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise UnavailableError(f"nnU-Net model folder {str(p.parent)!r}: {p.name} is missing "
                               f"({str(p)!r})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnavailableError(f"nnU-Net model file {str(p)!r} cannot be read as JSON ({e})") from e
    if not isinstance(data, dict):
        raise UnavailableError(f"nnU-Net model file {str(p)!r} must hold a JSON object")
    return data


def _safe_checkpoint_meta(ckpt: Path) -> tuple[str, str]:
    """(trainer_name, configuration) of a checkpoint read with ``weights_only=True``."""
    from .checkpoint import load_checkpoint_dict

    obj = load_checkpoint_dict(ckpt, repr(str(ckpt)), missing_key_error=UnavailableError)
    init = obj["init_args"]
    if not isinstance(init, dict) or not isinstance(init.get("configuration"), str):
        raise UnavailableError(f"nnU-Net checkpoint {str(ckpt)!r}: init_args has no "
                               "configuration")
    return str(obj["trainer_name"]), str(init["configuration"])


def resolve_model_folder(model_dir: Path, configuration: str | None = None,
                         folds: Sequence[int | str] | None = None) -> ModelFolder:
    """Check a model folder (or a dataset results folder holding one per configuration).

    :class:`UnavailableError` (69) names the missing or unreadable file;
    :class:`ConfigError` (78) a configuration or fold that the folder does not hold.
    """
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise UnavailableError(f"nnU-Net model folder {str(path)!r} does not exist: train one "
                               "with `autoseg detector train` or give --detector-model DIR")
    if not (path / "plans.json").exists() and configuration is not None:
        subs = sorted(p for p in path.glob(f"*__*__{configuration}") if p.is_dir())
        if len(subs) == 1:
            path = subs[0]
        elif len(subs) > 1:
            raise ConfigError(f"Option 'nnunet.configuration' {configuration!r} matches several "
                              f"model folders in {str(path)!r}: "
                              f"{', '.join(p.name for p in subs)}; give one as model_dir")
    dataset = _read_json(path / "dataset.json")
    plans = _read_json(path / "plans.json")
    if "labels" not in dataset or "configurations" not in plans:
        raise UnavailableError(f"nnU-Net model folder {str(path)!r}: dataset.json needs "
                               "'labels' and plans.json 'configurations'")
    if folds is None:
        found = sorted(p.parent.name[len("fold_"):] for p in path.glob(f"fold_*/{CHECKPOINT}"))
        nums = [int(f) for f in found if f.isdigit()]
        use: tuple[int | str, ...] = tuple(nums) if nums else (("all",) if "all" in found else ())
        if not use:
            raise UnavailableError(f"nnU-Net model folder {str(path)!r} has no "
                                   f"fold_X/{CHECKPOINT} (looked for "
                                   f"{str(path / 'fold_*' / CHECKPOINT)!r})")
    else:
        use = tuple(folds)
    ckpts = tuple(path / f"fold_{f}" / CHECKPOINT for f in use)
    for c in ckpts:
        if not c.is_file():
            raise UnavailableError(f"nnU-Net model folder {str(path)!r}: checkpoint "
                                   f"{str(c)!r} is missing (option 'nnunet.folds' = "
                                   f"{list(use)!r})")
    trainer, cfg = "", ""
    for c in ckpts:
        t, k = _safe_checkpoint_meta(c)
        if cfg and k != cfg:
            raise ConfigError(f"nnU-Net folds disagree on the configuration: {str(c)!r} is "
                              f"{k!r}, an earlier fold {cfg!r}")
        trainer, cfg = t, k
    if configuration is not None and configuration != cfg:
        raise ConfigError(f"Option 'nnunet.configuration' is {configuration!r}, but the model "
                          f"in {str(path)!r} was trained as {cfg!r} (nnU-Net always runs a "
                          "checkpoint with its own configuration)")
    if cfg not in plans["configurations"]:
        raise UnavailableError(f"nnU-Net model folder {str(path)!r}: plans.json has no "
                               f"configuration {cfg!r} used by its checkpoints")
    return ModelFolder(path=path, configuration=cfg, folds=use, trainer_name=trainer,
                       checkpoints=ckpts)


# -------------------------------------------------------------------------- orientation


def canonical_axes(direction: npt.NDArray[np.float64]) -> tuple[tuple[int, int, int],
                                                              tuple[bool, bool, bool]]:
    """How to lay a ``(z, y, x)`` array out canonically (see the module docstring).

    Returns ``(perm, flip)``: canonical axis ``a`` is array axis ``perm[a]``, reversed when
    ``flip[a]``. ``direction`` columns are the LPS vectors of the x, y, z array axes.
    """
    d = np.asarray(direction, dtype=np.float64)
    # array axis (0=z, 1=y, 2=x) -> its LPS vector
    vec = {0: d[:, 2], 1: d[:, 1], 2: d[:, 0]}
    # canonical axis a points to LPS component: z -> S (2), y -> P (1), x -> L (0)
    target = {0: 2, 1: 1, 2: 0}
    best: tuple[float, tuple[int, int, int]] | None = None
    import itertools

    for perm in itertools.permutations(range(3)):
        score = sum(abs(vec[perm[a]][target[a]]) for a in range(3))
        if best is None or score > best[0] + 1e-9:
            best = (score, (perm[0], perm[1], perm[2]))
    assert best is not None
    perm3 = best[1]
    flip = tuple(bool(vec[perm3[a]][target[a]] < 0) for a in range(3))
    return perm3, (flip[0], flip[1], flip[2])


def to_canonical(array: npt.NDArray[Any], direction: npt.NDArray[np.float64]
                 ) -> npt.NDArray[Any]:
    perm, flip = canonical_axes(direction)
    out = np.transpose(array, perm)
    for a in range(3):
        if flip[a]:
            out = np.flip(out, axis=a)
    return out


def from_canonical(array: npt.NDArray[Any], direction: npt.NDArray[np.float64]
                   ) -> npt.NDArray[Any]:
    """Inverse of :func:`to_canonical` (works on a trailing 3-D array)."""
    perm, flip = canonical_axes(direction)
    out = array
    lead = array.ndim - 3
    for a in range(3):
        if flip[a]:
            out = np.flip(out, axis=lead + a)
    inv = np.argsort(perm)
    return np.transpose(out, tuple(range(lead)) + tuple(lead + int(i) for i in inv))


def canonical_spacing(spacing: Sequence[float], direction: npt.NDArray[np.float64]
                      ) -> tuple[float, float, float]:
    perm, _ = canonical_axes(direction)
    return (float(spacing[perm[0]]), float(spacing[perm[1]]), float(spacing[perm[2]]))


# ----------------------------------------------------------------------------- runtime


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch threads inside the block (0 = leave torch's default)."""
    import torch

    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _LogStream(io.TextIOBase):
    """A text stream that sends nnU-Net's ``print`` output to this module's log."""

    def write(self, s: str) -> int:
        if s.strip():
            log.debug("nnU-Net: %s", s.rstrip())
        return len(s)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """nnU-Net prints (e.g. 'perform_everything_on_device=True is only supported for cuda
    devices'); library code must not, so its prints go to the debug log inside the block."""
    with contextlib.redirect_stdout(_LogStream()):
        yield


class NnunetOutput:
    """nnU-Net's result on one volume, in the volume's own ``(z, y, x)`` grid.

    Holds the network's logits; the label map and the probabilities are resampled back to
    the volume's grid only when first asked for (each costs a full-resolution resampling).
    """

    def __init__(self, model: NnunetModel, volume: Volume, logits: Any, props: dict[str, Any],
                 n_patches: int, seconds: float) -> None:
        self._model = model
        self._direction = volume.direction
        self._logits = logits
        self._props = props
        self.n_patches = n_patches
        self.seconds = seconds
        self._seg: npt.NDArray[np.uint8] | None = None
        self._fg: npt.NDArray[np.float32] | None = None

    def _convert(self, probabilities: bool) -> Any:
        import torch
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self._model.predictor
        try:
            with torch_threads(self._model.threads), quiet_stdout():
                return convert_predicted_logits_to_segmentation_with_correct_shape(
                    self._logits, p.plans_manager, p.configuration_manager, p.label_manager,
                    self._props, return_probabilities=probabilities,
                    num_threads_torch=self._model.threads or torch.get_num_threads())
        except (RuntimeError, ValueError, AssertionError, IndexError) as e:
            raise BackendError(f"nnU-Net could not map its prediction back to the input grid "
                               f"({type(e).__name__}: {str(e)[:300]})") from e

    @property
    def segmentation(self) -> npt.NDArray[np.uint8]:
        """nnU-Net's label map (argmax of the logits, exactly as ``nnUNetv2_predict``)."""
        if self._seg is None:
            seg = self._convert(False)
            self._seg = np.ascontiguousarray(
                from_canonical(np.asarray(seg).astype(np.uint8), self._direction))
        return self._seg

    @property
    def foreground(self) -> npt.NDArray[np.float32]:
        """P(any foreground label), 0..1."""
        if self._fg is None:
            _, probs = self._convert(True)
            probs = np.asarray(probs)
            fg = (1.0 - probs[0]) if probs.shape[0] > 1 else probs[0]
            self._fg = np.ascontiguousarray(
                from_canonical(np.clip(fg, 0.0, 1.0).astype(np.float32), self._direction))
        return self._fg

    def label_probability(self, labels: Sequence[int]) -> npt.NDArray[np.float32]:
        """P(voxel has one of ``labels``), 0..1, in the volume's grid (not cached).

        ``labels`` are label values of the model's dataset.json (plain, not region-based).
        """
        _, probs = self._convert(True)
        probs = np.asarray(probs)
        bad = [v for v in labels if not 0 < int(v) < probs.shape[0]]
        if bad or not labels:
            raise ConfigError(f"Argument 'labels' must be foreground labels 1..{probs.shape[0] - 1} "
                              f"of the model; got {list(labels)!r}")
        p = probs[[int(v) for v in labels]].sum(axis=0)
        return np.ascontiguousarray(
            from_canonical(np.clip(p, 0.0, 1.0).astype(np.float32), self._direction))


@dataclass(eq=False)
class NnunetModel:
    """A loaded nnU-Net predictor plus provenance. Thread-safe (one prediction at a time)."""

    folder: ModelFolder
    device: str
    tta: bool
    tile_step_size: float
    threads: int
    predictor: Any = field(repr=False)
    checkpoint_sha256: str = ""
    folder_sha256: str = ""
    trained: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last: tuple[Any, NnunetOutput] | None = field(default=None, repr=False)

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_dir": str(self.folder.path),
            "configuration": self.folder.configuration,
            "folds": list(self.folder.folds),
            "trainer": self.folder.trainer_name,
            "tta_mirroring": self.tta,
            "tile_step_size": self.tile_step_size,
            "device": self.device,
            "folder_sha256": self.folder_sha256,
        }
        if not self.trained:
            d["status"] = UNTRAINED
        return d

    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.predictor.configuration_manager.patch_size)

    def predict(self, volume: Volume) -> NnunetOutput:
        """Run nnU-Net on ``volume`` (cached for the last volume object seen)."""
        with self._lock:
            if self._last is not None and self._last[0]() is volume:
                return self._last[1]
            out = self._predict(volume)
            self._last = (weakref.ref(volume), out)
            return out

    def _predict(self, volume: Volume) -> NnunetOutput:
        import time

        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

        p = self.predictor
        img = to_canonical(volume.array, volume.direction)
        spacing = canonical_spacing(volume.spacing, volume.direction)
        data = np.ascontiguousarray(img, dtype=np.float32)[None]
        props = {"spacing": [float(s) for s in spacing]}
        t0 = time.perf_counter()
        try:
            with torch_threads(self.threads), quiet_stdout():
                # The body of nnUNetPredictor.predict_single_npy_array, split so that one
                # network pass gives both nnU-Net's own label map (from the logits, exactly
                # as nnUNetv2_predict exports it) and the probabilities (NnunetOutput).
                ppa = PreprocessAdapterFromNpy([data], [None], [props], [None], p.plans_manager,
                                               p.dataset_json, p.configuration_manager,
                                               num_threads_in_multithreaded=1, verbose=False)
                dct = next(ppa)
                n_patches = self._count_patches(dct["data"].shape[1:])
                logits = p.predict_logits_from_preprocessed_data(dct["data"]).cpu()
        except (RuntimeError, ValueError, AssertionError, IndexError) as e:
            raise BackendError(f"nnU-Net inference failed on a volume of shape {volume.shape} "
                               f"({type(e).__name__}: {str(e)[:300]})") from e
        secs = time.perf_counter() - t0
        log.info("nnU-Net (%s, folds %s, TTA %s) on %s: %d patch(es), %.1f s",
                 self.folder.configuration, list(self.folder.folds), self.tta, volume.shape,
                 n_patches, secs)
        return NnunetOutput(self, volume, logits, dct["data_properties"], n_patches, secs)

    def _count_patches(self, shape: Sequence[int]) -> int:
        """Sliding-window patches per fold (times 8 with 3-D mirroring TTA)."""
        patch = self.predictor.configuration_manager.patch_size
        padded = tuple(max(int(s), int(q)) for s, q in zip(shape, patch))
        return len(self.predictor._internal_get_sliding_window_slicers(padded))


_CACHE: dict[tuple[Any, ...], NnunetModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(settings: Settings, opts: NnunetOptions | None = None) -> NnunetModel:
    """Load (once per process and option set) the nnU-Net model that ``settings`` names."""
    opts = opts or NnunetOptions.from_settings(settings)
    model_dir = opts.model_dir or default_model_dir(settings)
    folder = resolve_model_folder(model_dir, opts.configuration, opts.folds)
    device = resolve_device(settings.device)
    key = (str(folder.path.resolve()), folder.configuration, folder.folds, opts.tta,
           opts.tile_step_size, device, settings.threads,
           tuple(c.stat().st_mtime_ns for c in folder.checkpoints))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from ...weights import load_manifest, resolve, sha256_file

    dev = torch.device(device)
    with torch_threads(settings.threads), quiet_stdout():
        try:
            predictor = nnUNetPredictor(tile_step_size=opts.tile_step_size, use_gaussian=True,
                                        use_mirroring=opts.tta,
                                        perform_everything_on_device=dev.type == "cuda",
                                        device=dev, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder.path),
                                                           use_folds=folder.folds)
        except (RuntimeError, KeyError, ValueError, AssertionError) as e:
            raise UnavailableError(f"nnU-Net model folder {str(folder.path)!r} cannot be "
                                   f"loaded ({type(e).__name__}: {str(e)[:300]})") from e
    ck_sha = sha256_file(folder.checkpoints[0])
    choice = resolve("nnunetv2_model_folder", folder.path, settings.weights_dir,
                     model="nnunet", option="nnunet.model_dir")
    folder_sha = choice.sha256
    entry = load_manifest().get(WEIGHTS_NAME)
    known = {entry.sha256.lower()} - {""} if entry is not None else set()
    record = choice.record
    trained = choice.trained or ck_sha in known
    if record is not None:
        log.info("nnU-Net model %s was trained here (%s case(s), %s epoch(s))", folder.path,
                 record.get("n_cases"), record.get("epochs"))
    if not trained:
        log.warning("nnU-Net model %s is not a known trained release (sha256 %s): reported "
                    "as an %s", folder.path, ck_sha[:12], UNTRAINED)
    model = NnunetModel(folder=folder, device=device, tta=opts.tta,
                        tile_step_size=opts.tile_step_size, threads=settings.threads,
                        predictor=predictor, checkpoint_sha256=ck_sha, folder_sha256=folder_sha,
                        trained=trained)
    with _CACHE_LOCK:
        _CACHE[key] = model
    return model


def nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"
