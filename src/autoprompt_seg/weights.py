"""Weights manifest: the known checkpoints, where they live, and their sha256.

The manifest is ``weights/manifest.toml`` in the source tree (shipped as package data
``autoprompt_seg/weights_manifest.toml``). Installed files live in the weights folder
(``--weights-dir`` / ``AUTOSEG_WEIGHTS_DIR`` / the user data folder).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    architecture: str
    source: str
    sha256: str = ""
    description: str = ""


def load_manifest() -> dict[str, WeightsEntry]:
    text = resources.files(__package__).joinpath("weights_manifest.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"weights manifest is not valid TOML: {e}") from e
    out = {}
    for name, d in data.get("weights", {}).items():
        out[name] = WeightsEntry(name=name, file=d["file"], architecture=d["architecture"],
                                 source=d.get("source", ""), sha256=d.get("sha256", ""),
                                 description=d.get("description", ""))
    return out


def installed_path(name: str, weights_dir: Path) -> Path | None:
    entry = load_manifest().get(name)
    if entry is None:
        return None
    p = Path(weights_dir) / entry.file
    return p if p.exists() else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
