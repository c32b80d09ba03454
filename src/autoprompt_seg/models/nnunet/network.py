"""The network of an installed nnU-Net model, built by nnunetv2's own stock trainer code
(:mod:`.install` describes the rules): trainer mapping (a checkpoint's trainer -> the stock
base class that builds its network), checkpoints read with ``weights_only=True`` and the
strict load of their weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError

#: Trainers that nnunetv2 does not ship, read in their authors' source, and the stock
#: trainer each subclasses (the differences are training-only: learning rate, epochs, loss).
KNOWN_TRAINERS: dict[str, tuple[str, str]] = {
    "nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring": (
        "nnUNetTrainerNoMirroring",
        "TotalSegmentator custom_trainers.py: subclass of nnUNetTrainerNoMirroring, only "
        "initial_lr = 2.5e-3"),
    "nnUNetTrainerDiceTopK10Loss_2000epochs": (
        "nnUNetTrainerDiceTopK10Loss",
        "TotalSegmentator custom_trainers.py: subclass of nnUNetTrainerDiceTopK10Loss, only "
        "num_epochs = 2000"),
    "nnUNetTrainerSkeletonRecall": (
        "nnUNetTrainer",
        "TotalSegmentator custom_trainers.py: subclass of nnUNetTrainer, only the loss and "
        "the training data loader change"),
}


def _stock_trainer(name: str) -> type | None:
    """The nnunetv2 trainer class called ``name`` (None when nnunetv2 ships none)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from .model import quiet_stdout

    try:
        with quiet_stdout():
            cls: type = recursive_find_trainer_class_by_name(name)
        return cls
    except (RuntimeError, AssertionError):
        return None


def map_trainer(name: str, override: str | None = None) -> tuple[str, str]:
    """``(stock base class name, rule)`` for a checkpoint's trainer (module docstring).

    Raises :class:`ConfigError` (78) for an unknown trainer, naming it and ``--trainer-base``.
    """
    if override is not None:
        if _stock_trainer(override) is None:
            raise ConfigError(f"Argument 'trainer_base' (--trainer-base) must name a trainer "
                              f"that nnunetv2 ships; got {override!r}")
        return override, f"--trainer-base {override} (set by the user)"
    if _stock_trainer(name) is not None:
        return name, "ships with nnunetv2"
    if name in KNOWN_TRAINERS:
        base, why = KNOWN_TRAINERS[name]
        return base, why
    if name.endswith("NoMirroring"):
        return "nnUNetTrainerNoMirroring", "name ends in NoMirroring"
    raise ConfigError(
        f"nnU-Net trainer {name!r} is not shipped with nnunetv2 and is not in autoseg's table "
        f"of known custom trainers (TotalSegmentator's, and names ending in NoMirroring); "
        f"give the stock trainer it subclasses with --trainer-base (e.g. --trainer-base "
        f"nnUNetTrainer) if it only changes training, not the network")


def build_network(plans: dict[str, Any], dataset: dict[str, Any], configuration: str,
                  trainer_base: str) -> Any:
    """The network that ``trainer_base`` builds from ``plans`` (nnunetv2's own code)."""
    import inspect

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cls = _stock_trainer(trainer_base)
    if cls is None:
        raise ConfigError(f"trainer base {trainer_base!r} is not shipped with nnunetv2")
    pm = PlansManager(plans)
    if configuration not in plans.get("configurations", {}):
        raise ConfigError(f"plans.json has no configuration {configuration!r}; it has "
                          f"{', '.join(plans.get('configurations', {}))}")
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset)
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    builder: Any = getattr(cls, "build_network_architecture")  # noqa: B009
    if "plans_manager" in inspect.signature(builder).parameters:
        return builder(pm, cm, n_in, n_out, enable_deep_supervision=False)
    return builder(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                   cm.network_arch_init_kwargs_req_import, n_in, n_out,
                   enable_deep_supervision=False)


def _strict_load(net: Any, weights: Mapping[str, Any], what: str, trainer: str,
                 base: str) -> None:
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"nnU-Net checkpoint {what} (trainer {trainer!r}) does not load "
                          f"strictly into the network of {base!r} built from plans.json: "
                          f"{str(e)[:300]}; the trainer changes the architecture, so it "
                          "cannot be run as that base (--trainer-base)") from e
