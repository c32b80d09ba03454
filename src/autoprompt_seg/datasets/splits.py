"""Seeded patient-level splits of a list of cases, and their JSON file."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .cases import Case


def make_splits(cases: Sequence[Case], seed: int = 0,
                fractions: Sequence[float] = (0.7, 0.1, 0.2),
                names: Sequence[str] = ("train", "val", "test")) -> dict[str, Any]:
    """Seeded split by patient: every case of a patient lands in the same split.

    Patients are sorted, shuffled with ``random.Random(seed)`` and cut by ``fractions``
    (rounded; the last split takes the rest). Returns a JSON-ready dict.
    """
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or \
            abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"Argument 'fractions' must be {len(names)} non-negative numbers "
                          f"summing to 1; got {list(fractions)!r}")
    patients = sorted({c.patient_id for c in cases})
    random.Random(seed).shuffle(patients)
    out: dict[str, list[str]] = {}
    start = 0
    for i, (name, frac) in enumerate(zip(names, fractions)):
        stop = len(patients) if i == len(names) - 1 else start + round(frac * len(patients))
        out[name] = sorted(patients[start:stop])
        start = stop
    by_patient = {n: sorted(c.case_id for c in cases if c.patient_id in set(ps))
                  for n, ps in out.items()}
    return {"version": 1, "seed": seed, "fractions": list(fractions), "patients": out,
            "cases": by_patient}


def save_splits(splits: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    return p


def load_splits(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--splits {p}: cannot be read ({e})") from e
    if not isinstance(data, dict) or "cases" not in data:
        raise ConfigError(f"--splits {p}: not a splits file (no 'cases' key)")
    return data
