"""Install any nnU-Net v2 model (``autoseg weights add-nnunet``) and load it back.

Accepted sources
----------------
* a zip made by nnU-Net's ``nnUNetv2_export_model_to_zip``
  (``nnunetv2.model_sharing.model_export.export_pretrained_model``): paths relative to
  ``nnUNet_results``, ``DatasetXXX_Name/TRAINER__PLANS__CONFIG/{dataset.json, plans.json,
  fold_N/checkpoint_final.pth}`` (plus progress.png, summaries, ...);
* TotalSegmentator's weight zips (GitHub release ``v2.5.0-weights`` etc.), which use the
  same layout;
* a plain model folder (``dataset.json``, ``plans.json``, ``fold_N/...``), a dataset folder
  holding ``TRAINER__PLANS__CONFIG`` folders, or a zip of either.

What is installed
-----------------
Only the chosen model: ``dataset.json``, ``plans.json``, ``fold_N/<checkpoint>`` of the
chosen folds, and ``autoseg_nnunet.json`` (the choices: configuration, folds, checkpoint
name, tumour labels, the trainer and the stock trainer it is run as, the sha256 of the
source zip). The folder lands in the weights folder as ``NAME``; its sha256 (over every
file, :func:`autoprompt_seg.weights.sha256_path`) is recorded in ``installed.json`` like
every other weights entry, so provenance (pinned, official download, user pin, unknown)
works unchanged.

Checks (nothing is installed when one fails)
--------------------------------------------
* every zip member is checked before anything is written: absolute paths, ``..``
  components, drive letters, backslashes and symbolic links are refused (zip-slip:
  :class:`ConfigError`, exit 78), so nothing can land outside the target;
* the layout: exactly one model folder after ``--configuration`` selects; the folds have
  the checkpoint; labels are plain integers (region-based models are refused);
* every checkpoint is read with ``torch.load(weights_only=True)`` (a pickle that would run
  code is refused) and loads *strictly* into the network that nnU-Net builds from
  ``plans.json``;
* the files go to a hidden temporary folder inside the weights folder, are checked there,
  and are renamed into place in one step.

Custom trainer classes
----------------------
nnU-Net's predictor looks the checkpoint's ``trainer_name`` up among the trainers that
ship with nnunetv2 and fails for any other. Inference only needs the trainer's network
builder (``build_network_architecture``, which reads the architecture from ``plans.json``)
and the mirroring axes (stored in the checkpoint as ``inference_allowed_mirroring_axes``).
So an unknown trainer is *run as* a stock base class, by this table (first match wins):

1. a trainer that nnunetv2 ships: itself;
2. :data:`~.network.KNOWN_TRAINERS`, trainers read in their authors' source, e.g. TotalSegmentator's
   ``nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring`` (a ``nnUNetTrainerNoMirroring`` that
   only sets ``initial_lr``) -> ``nnUNetTrainerNoMirroring``;
3. a name ending in ``NoMirroring`` -> ``nnUNetTrainerNoMirroring``;
4. anything else is refused (:class:`ConfigError`, exit 78) naming the trainer and the
   ``--trainer-base`` option that sets the base by hand.

The strict load of the weights into the base's network is the safety net: a custom
trainer that changed the architecture fails it (exit 78) instead of running wrongly.

Nothing here sets ``nnUNet_*`` environment variables: the predictor is initialised by
hand (``nnUNetPredictor.manual_initialization``) from the installed folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ...config import Settings
from ...errors import ConfigError, UnavailableError
from .checkpoint import load_checkpoint_dict
from .network import _strict_load, build_network, map_trainer

log = logging.getLogger(__name__)

ARCHITECTURE = "nnunetv2_model_folder"
CHOICES_FILE = "autoseg_nnunet.json"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# ------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class InstallChoices:
    """What to install from an nnU-Net source, and how the detector uses it."""

    configuration: str | None = None  # None: the only one in the source
    folds: tuple[int | str, ...] | None = None  # None: every fold with the checkpoint
    checkpoint_name: str = "checkpoint_final.pth"
    tumour_labels: tuple[int, ...] | None = None  # None: every foreground label
    trainer_base: str | None = None  # None: the table in the module docstring

    def __post_init__(self) -> None:
        if self.configuration is not None and (not isinstance(self.configuration, str)
                                               or not self.configuration):
            raise ConfigError(f"Argument 'configuration' must be a non-empty string; got "
                              f"{self.configuration!r}")
        if self.checkpoint_name not in CHECKPOINT_NAMES:
            raise ConfigError(f"Argument 'checkpoint_name' must be one of "
                              f"{', '.join(CHECKPOINT_NAMES)}; got {self.checkpoint_name!r}")
        if self.folds is not None:
            if not self.folds:
                raise ConfigError("Argument 'folds' must not be empty; got ()")
            for f in self.folds:
                if not ((isinstance(f, int) and not isinstance(f, bool) and f >= 0)
                        or f == "all"):
                    raise ConfigError(f"Argument 'folds' must hold fold numbers or 'all'; "
                                      f"got {self.folds!r}")
        if self.tumour_labels is not None:
            if not self.tumour_labels or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0
                    for v in self.tumour_labels):
                raise ConfigError(f"Argument 'tumour_labels' must be positive label numbers; "
                                  f"got {self.tumour_labels!r}")
        if self.trainer_base is not None and (not isinstance(self.trainer_base, str)
                                              or not self.trainer_base):
            raise ConfigError(f"Argument 'trainer_base' must be a trainer class name; got "
                              f"{self.trainer_base!r}")


def parse_folds(value: str | Sequence[str] | None) -> tuple[int | str, ...] | None:
    """``"0"``, ``"0,1"``, ``"all"`` (or a list of those) -> a folds tuple (None: default)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part == "all":
                out.append("all")
            elif part.isdigit():
                out.append(int(part))
            else:
                raise ConfigError(f"Argument 'fold' must be a fold number or 'all'; got "
                                  f"{value!r}")
    return tuple(out) or None


@dataclass(frozen=True)
class InstalledModel:
    """An installed nnU-Net model as :func:`read_installed` finds it."""

    name: str
    path: Path
    dataset: str
    trainer: str
    trainer_base: str
    trainer_rule: str
    plans: str
    configuration: str
    folds: tuple[int | str, ...]
    checkpoint_name: str
    tumour_labels: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)
    source_sha256: str = ""

    @property
    def checkpoints(self) -> tuple[Path, ...]:
        return tuple(self.path / f"fold_{f}" / self.checkpoint_name for f in self.folds)

    def label_names(self, values: Sequence[int]) -> list[str]:
        inv = {v: k for k, v in self.labels.items()}
        return [inv.get(v, str(v)) for v in values]


# -------------------------------------------------------------------------- sources


class _Source:
    """Files of a zip or a folder, by relative POSIX path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_zip = path.is_file()
        self._zip: zipfile.ZipFile | None = None
        self.sha256 = ""
        if self.is_zip:
            from ...weights import sha256_file

            if not zipfile.is_zipfile(path):
                raise UnavailableError(f"Argument 'source': {str(path)!r} is neither a folder "
                                       "nor a readable zip file (truncated or corrupt?)")
            self.sha256 = sha256_file(path)
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise UnavailableError(f"Argument 'source': {str(path)!r} cannot be read as a "
                                       f"zip ({e})") from e
            self.names = self._check_members(self._zip)
        else:
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                                if p.is_file())

    def _check_members(self, zf: zipfile.ZipFile) -> list[str]:
        """Every member's path, after refusing any that could land outside the target."""
        out = []
        for info in zf.infolist():
            n = info.filename
            mode = (info.external_attr >> 16) & 0xFFFF
            bad = ""
            if "\\" in n:
                bad = "a backslash in the path"
            elif n.startswith("/") or re.match(r"^[A-Za-z]:", n):
                bad = "an absolute path"
            elif ".." in PurePosixPath(n).parts:
                bad = "a '..' component"
            elif stat.S_ISLNK(mode):
                bad = "a symbolic link"
            if bad:
                raise ConfigError(f"zip {str(self.path)!r}: member {n!r} has {bad}; such a "
                                  "member could be written outside the target folder "
                                  "(zip-slip): refused, nothing was installed")
            if not info.is_dir():
                out.append(n)
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(rel)
        return (self.path / rel).read_bytes()

    def copy_to(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self._zip is not None:
            with self._zip.open(rel) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            shutil.copyfile(self.path / rel, dest)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _model_folders(names: Sequence[str]) -> list[str]:
    """Relative prefixes ("" for the root) of the model folders among ``names``."""
    have = set(names)
    out = []
    for n in names:
        p = PurePosixPath(n)
        if p.name != "plans.json":
            continue
        prefix = "" if str(p.parent) == "." else str(p.parent) + "/"
        if prefix + "dataset.json" in have and any(
                m.startswith(prefix + "fold_") and m.endswith(".pth") for m in names):
            out.append(prefix)
    return sorted(out)


def _folder_parts(prefix: str) -> tuple[str, str, str, str]:
    """``(dataset, trainer, plans, configuration)`` from ``[DatasetX/]T__P__C/`` (blanks
    where the name does not say)."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    if parts and parts[-1].count("__") == 2:
        tr, pl, cfg = parts[-1].split("__")
        ds = parts[-2] if len(parts) >= 2 else ""
        return ds, tr, pl, cfg
    return (parts[-1] if parts else ""), "", "", ""


def _read_json(src: _Source, rel: str) -> dict[str, Any]:
    try:
        data = json.loads(src.read_bytes(rel).decode("utf-8"))
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnavailableError(f"nnU-Net source {str(src.path)!r}: {rel} cannot be read as "
                               f"JSON ({e})") from e
    if not isinstance(data, dict):
        raise UnavailableError(f"nnU-Net source {str(src.path)!r}: {rel} must hold an object")
    return data


def _labels(dataset: Mapping[str, Any], where: str) -> dict[str, int]:
    raw = dataset.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: dataset.json has no 'labels' mapping")
    out = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: label {k!r} is {v!r}; region-based nnU-Net models "
                              "(labels given as lists) are not supported")
        out[str(k)] = int(v)
    return out


# ------------------------------------------------------------------------- install


def _entry_for(name: str, manifest: Mapping[str, Any]) -> Any:
    from ...weights import WeightsEntry

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"Argument 'name' must be a plain folder name (letters, digits, "
                          f"'_', '.', '-'); got {name!r}")
    e = manifest.get(name)
    if e is None:
        return WeightsEntry(name=name, file=name, architecture=ARCHITECTURE, source="",
                            description="nnU-Net v2 model installed with add-nnunet")
    if e.architecture != ARCHITECTURE:
        raise ConfigError(f"Argument 'name': {name!r} is a manifest entry for "
                          f"{e.architecture!r}, not an nnU-Net model folder")
    return e


def manifest_defaults(name: str) -> InstallChoices:
    """The ``[weights.NAME.nnunet]`` defaults of a manifest entry (empty when none)."""
    from ...weights import manifest_text

    raw = tomllib.loads(manifest_text()).get("weights", {}).get(name, {}).get("nnunet", {})
    folds = parse_folds([str(f) for f in raw["folds"]]) if "folds" in raw else None
    labels = tuple(int(v) for v in raw["tumour_labels"]) if "tumour_labels" in raw else None
    return InstallChoices(configuration=raw.get("configuration"), folds=folds,
                          checkpoint_name=raw.get("checkpoint_name", "checkpoint_final.pth"),
                          tumour_labels=labels, trainer_base=raw.get("trainer_base"))


def merge_choices(given: InstallChoices, defaults: InstallChoices) -> InstallChoices:
    """``given`` where set, else ``defaults``."""
    return InstallChoices(
        configuration=given.configuration or defaults.configuration,
        folds=given.folds or defaults.folds,
        checkpoint_name=(given.checkpoint_name if given.checkpoint_name != CHECKPOINT_NAMES[0]
                         else defaults.checkpoint_name),
        tumour_labels=given.tumour_labels or defaults.tumour_labels,
        trainer_base=given.trainer_base or defaults.trainer_base)


def add_nnunet(source: str | os.PathLike[str], name: str, weights_dir: Path,
               choices: InstallChoices | None = None, *, trust: bool = False,
               origin: str | None = None, source_text: str | None = None) -> Any:
    """Check ``source`` (zip or folder) and install its chosen model as ``name``.

    Returns the :class:`autoprompt_seg.weights.InstalledWeights` record. Raises
    :class:`ConfigError` (78: layout, labels, trainer, zip-slip, name) or
    :class:`UnavailableError` (69: missing, unreadable or corrupt files); nothing is
    installed then.
    """
    from ...weights import _check_pin, _install, load_manifest, sha256_path

    src_path = Path(source).expanduser()
    if not src_path.exists():
        raise UnavailableError(f"Argument 'source': {str(src_path)!r} does not exist")
    manifest = load_manifest()
    entry = _entry_for(name, manifest)
    choices = merge_choices(choices or InstallChoices(), manifest_defaults(name))
    wdir = Path(weights_dir)
    try:
        wdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Argument 'weights_dir': cannot create {str(wdir)!r} ({e})") from e
    src = _Source(src_path)
    stage_root = Path(tempfile.mkdtemp(dir=wdir, prefix=f".adding-{entry.file}-"))
    try:
        staged = stage_root / entry.file
        meta = _stage(src, staged, choices)
        if src.is_zip:
            _check_pin(entry, src.sha256, str(src_path))
        sha = sha256_path(staged)
        if not src.is_zip:
            _check_pin(entry, sha, str(src_path))
        org = origin or ("trust" if trust and not entry.sha256 else "add")
        rec = _install(staged, entry, sha, wdir, origin=org,
                       source=source_text or str(src_path), move=True)
    finally:
        src.close()
        shutil.rmtree(stage_root, ignore_errors=True)
    log.info("installed nnU-Net model %s (%s, %s, folds %s, trainer %s run as %s)", name,
             meta["dataset"], meta["configuration"], meta["folds"], meta["trainer"],
             meta["trainer_base"])
    return rec


def _stage(src: _Source, staged: Path, choices: InstallChoices) -> dict[str, Any]:
    """Check the source and write the chosen model into ``staged``; returns the choices
    file's content."""
    where = f"nnU-Net source {str(src.path)!r}"
    folders = _model_folders(src.names)
    if not folders:
        raise ConfigError(f"{where} holds no nnU-Net model folder (dataset.json, plans.json "
                          "and fold_N/checkpoint_*.pth side by side)")
    if choices.configuration is not None:
        picked = [f for f in folders if _folder_parts(f)[3] in ("", choices.configuration)]
    else:
        picked = folders
    if len(picked) != 1:
        listing = ", ".join(f.rstrip("/") or "." for f in folders)
        if not picked:
            raise ConfigError(f"{where}: no model folder for configuration "
                              f"{choices.configuration!r}; it has: {listing}")
        raise ConfigError(f"{where} holds several models ({listing}); choose one with "
                          "--configuration")
    prefix = picked[0]
    ds_name, tr_name, plans_name, cfg_name = _folder_parts(prefix)
    dataset = _read_json(src, prefix + "dataset.json")
    plans = _read_json(src, prefix + "plans.json")
    labels = _labels(dataset, where)
    ckname = choices.checkpoint_name
    have = sorted({n[len(prefix):].split("/")[0][len("fold_"):] for n in src.names
                   if n.startswith(prefix + "fold_") and n.endswith("/" + ckname)
                   and n[len(prefix):].count("/") == 1})
    if choices.folds is None:
        nums = sorted(int(f) for f in have if f.isdigit())
        folds: tuple[int | str, ...] = tuple(nums) or (("all",) if "all" in have else ())
        if not folds:
            raise ConfigError(f"{where}: model {prefix or '.'} has no fold_N/{ckname} "
                              f"(--checkpoint-name chooses {' or '.join(CHECKPOINT_NAMES)})")
    else:
        folds = choices.folds
        missing = [f for f in folds if str(f) not in have]
        if missing:
            raise ConfigError(f"{where}: fold(s) {missing} have no {ckname}; available: "
                              f"{', '.join(have) or 'none'}")
    foreground = sorted(v for k, v in labels.items() if v > 0 and k != "ignore")
    if choices.tumour_labels is None:
        tumour = tuple(foreground)
    else:
        bad = [v for v in choices.tumour_labels if v not in foreground]
        if bad:
            raise ConfigError(f"Argument 'tumour_labels' (--tumour-labels): {bad} are not "
                              f"foreground labels of this model; it has "
                              f"{', '.join(f'{v}={k}' for k, v in labels.items() if v > 0)}")
        tumour = tuple(choices.tumour_labels)
    staged.mkdir(parents=True)
    for fname in ("dataset.json", "plans.json"):
        src.copy_to(prefix + fname, staged / fname)
    trainer, cfg, base, rule = "", "", "", ""
    for f in folds:
        rel = f"{prefix}fold_{f}/{ckname}"
        dest = staged / f"fold_{f}" / ckname
        src.copy_to(rel, dest)
        ck = load_checkpoint_dict(dest, repr(f"{src.path}:{rel}"))
        t = str(ck["trainer_name"])
        k = str(ck["init_args"].get("configuration", "")) if isinstance(
            ck["init_args"], dict) else ""
        if trainer and (t, k) != (trainer, cfg):
            raise ConfigError(f"{where}: folds disagree: fold_{f} is {t}/{k}, an earlier fold "
                              f"{trainer}/{cfg}")
        if not trainer:
            trainer, cfg = t, k
            if choices.configuration is not None and cfg != choices.configuration:
                raise ConfigError(f"Argument 'configuration' is {choices.configuration!r}, "
                                  f"but {rel} was trained as {cfg!r}")
            base, rule = map_trainer(trainer, choices.trainer_base)
            net = build_network(plans, dataset, cfg, base)
        _strict_load(net, ck["network_weights"], repr(rel), trainer, base)
    meta = {"format": 1, "dataset": ds_name, "trainer": trainer or tr_name,
            "trainer_base": base, "trainer_rule": rule, "plans": plans_name or
            str(plans.get("plans_name", "")), "configuration": cfg or cfg_name,
            "folds": list(folds), "checkpoint_name": ckname, "tumour_labels": list(tumour),
            "labels": labels, "source_member": prefix.rstrip("/"),
            "source_sha256": src.sha256}
    (staged / CHOICES_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


# --------------------------------------------------------------------------- lookup


def resolve(name_or_path: str | os.PathLike[str], weights_dir: Path) -> Path:
    """The installed folder of ``name_or_path``: an installed name, or a folder path that
    holds ``autoseg_nnunet.json``."""
    p = Path(name_or_path).expanduser()
    if (p / CHOICES_FILE).is_file():
        return p
    cand = Path(weights_dir) / str(name_or_path)
    if _NAME_RE.match(str(name_or_path)) and (cand / CHOICES_FILE).is_file():
        return cand
    raise UnavailableError(
        f"nnU-Net model {str(name_or_path)!r} is not installed in {str(weights_dir)!r}: "
        f"`autoseg weights add-nnunet ZIP --name {Path(str(name_or_path)).name}` (or "
        f"`autoseg weights fetch NAME` for a manifest entry)")


def read_installed(folder: Path) -> InstalledModel:
    """The installed model in ``folder`` (its ``autoseg_nnunet.json``), checked."""
    p = Path(folder) / CHOICES_FILE
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
        folds: tuple[int | str, ...] = tuple("all" if f == "all" else int(f)
                                             for f in m["folds"])
        model = InstalledModel(
            name=Path(folder).name, path=Path(folder), dataset=str(m.get("dataset", "")),
            trainer=str(m["trainer"]), trainer_base=str(m["trainer_base"]),
            trainer_rule=str(m.get("trainer_rule", "")), plans=str(m.get("plans", "")),
            configuration=str(m["configuration"]), folds=folds,
            checkpoint_name=str(m["checkpoint_name"]),
            tumour_labels=tuple(int(v) for v in m["tumour_labels"]),
            labels={str(k): int(v) for k, v in m.get("labels", {}).items()},
            source_sha256=str(m.get("source_sha256", "")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UnavailableError(f"{str(p)!r} is missing or unreadable ({e}); install the model "
                               "again with `autoseg weights add-nnunet`") from e
    for c in model.checkpoints:
        if not c.is_file():
            raise UnavailableError(f"installed nnU-Net model {str(folder)!r}: {str(c)!r} is "
                                   "missing")
    return model


# ---------------------------------------------------------------------------- load


def load_installed(name_or_path: str | os.PathLike[str], settings: Settings, *,
                   tta: bool = False, tile_step_size: float = 0.5) -> Any:
    """Load an installed model as an :class:`autoprompt_seg.models.nnunet.model.NnunetModel`
    (same inference code as the ``nnunet`` detector) with nnU-Net's predictor initialised
    by hand: the network of the stock base trainer, the checkpoint's weights (read with
    ``weights_only=True``) and its mirroring axes. No environment variable is read."""
    import torch

    from ...config import resolve_device
    from ...weights import checkpoint_provenance, sha256_file, sha256_path
    from .model import ModelFolder, NnunetModel, quiet_stdout, torch_threads

    folder = resolve(name_or_path, settings.weights_dir)
    model = read_installed(folder)
    device = resolve_device(settings.device)
    dev = torch.device(device)
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    params, mirror = [], None
    for i, c in enumerate(model.checkpoints):
        ck = load_checkpoint_dict(c, repr(str(c)))
        params.append(ck["network_weights"])
        if i == 0:
            mirror = ck["inference_allowed_mirroring_axes"]
    with torch_threads(settings.threads), quiet_stdout():
        net = build_network(plans, dataset, model.configuration, model.trainer_base)
        _strict_load(net, params[0], repr(str(model.checkpoints[0])), model.trainer,
                     model.trainer_base)
        pm = PlansManager(plans)
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                    use_mirroring=tta,
                                    perform_everything_on_device=dev.type == "cuda",
                                    device=dev, verbose=False, verbose_preprocessing=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(net, pm, pm.get_configuration(model.configuration),
                                        params, dataset, model.trainer,
                                        tuple(mirror) if mirror is not None else None)
        predictor.network = predictor.network.to(dev)
    folder_sha = sha256_path(folder)
    prov = checkpoint_provenance(folder_sha, ARCHITECTURE, settings.weights_dir, path=folder)
    mf = ModelFolder(path=folder, configuration=model.configuration, folds=model.folds,
                     trainer_name=model.trainer, checkpoints=model.checkpoints)
    nn = NnunetModel(folder=mf, device=device, tta=tta, tile_step_size=tile_step_size,
                     threads=settings.threads, predictor=predictor,
                     checkpoint_sha256=sha256_file(model.checkpoints[0]),
                     folder_sha256=folder_sha, trained=prov.trusted)
    return model, nn, prov
