"""Run settings, passed explicitly (never through environment variables written at run time).

Precedence: defaults < ``AUTOSEG_*`` environment variables < command-line flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE, OperatingPoint

DEVICES = ("auto", "cpu", "cuda")


def default_cache_dir() -> Path:
    """User cache folder (demo data). ``AUTOSEG_CACHE_DIR`` overrides."""
    env = os.environ.get("AUTOSEG_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("autoprompt_seg"))


def default_weights_dir() -> Path:
    """User data folder for weights. ``AUTOSEG_WEIGHTS_DIR`` overrides."""
    env = os.environ.get("AUTOSEG_WEIGHTS_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("autoprompt_seg")) / "weights"


@dataclass(frozen=True)
class Settings:
    """Everything a backend may need to know about the run."""

    device: str = "auto"
    threads: int = 0  # 0 = library default
    weights_dir: Path = field(default_factory=default_weights_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific, validated there
    #: the operating point: automatic boxes below ``min_score`` or beyond ``max_lesions``
    #: are reported as "not segmented" (see :class:`~autoprompt_seg.types.OperatingPoint`)
    min_score: float = DEFAULT_MIN_SCORE
    max_lesions: int = DEFAULT_MAX_LESIONS

    def __post_init__(self) -> None:
        try:
            self.operating_point()
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if self.device not in DEVICES:
            raise ConfigError(f"Argument 'device' must be one of {', '.join(DEVICES)}; "
                              f"got {self.device!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"Argument 'threads' must be a non-negative integer; "
                              f"got {self.threads!r}")

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(min_score=self.min_score, max_lesions=self.max_lesions)

    def with_(self, **kw: Any) -> Settings:
        return replace(self, **kw)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. ``cuda`` without one fails."""
    if device not in DEVICES:
        raise ConfigError(f"Argument 'device' must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = bool(torch.cuda.is_available())
    if device == "cuda" and not has_cuda:
        from .errors import UnavailableError

        raise UnavailableError("--device cuda was asked for, but torch sees no CUDA device")
    return "cuda" if has_cuda else "cpu"
