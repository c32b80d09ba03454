"""Shared fixtures. Real demo data is fetched once per machine into the user cache
(AUTOSEG_CACHE_DIR overrides), never from ../shared."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def _cache_dir() -> Path:
    from autoprompt_seg.config import default_cache_dir

    return default_cache_dir()


def _fetch_or_skip(fetch_name: str, what: str) -> Path:
    """``autoprompt_seg.data.<fetch_name>`` into the cache; without network and cache the
    test is skipped, except in CI, where that is an error."""
    from autoprompt_seg import data
    from autoprompt_seg.errors import UnavailableError

    try:
        return getattr(data, fetch_name)(_cache_dir())
    except UnavailableError as e:  # pragma: no cover - only without network and cache
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{what} unavailable: {e}")


@pytest.fixture(scope="session")
def pycerr_root() -> Path:
    """Folder with pat_1..pat_4 (real lung tumour CTs with RTSTRUCT GTV-1)."""
    return _fetch_or_skip("fetch_pycerr", "demo data")


@pytest.fixture(scope="session")
def wholechest_root() -> Path:
    """Folder with PyRadiomics' real whole-chest CTs lung1/lung2 (image and label NRRD)."""
    return _fetch_or_skip("fetch_wholechest_cases", "whole-chest test data")


@pytest.fixture(scope="session")
def pat4_dir(pycerr_root: Path) -> Path:
    return pycerr_root / "pat_4"


def tool(name: str) -> str:
    """Path of a command-line tool, or skip (outside CI) when it is not installed.

    System tools come first: pynetdicom installs Python ``storescu``/``echoscu`` apps into
    the virtual environment, which must not shadow dcmtk's when the venv is activated.
    Tools that only exist in the venv (dcmqi's) are found there."""
    here = Path(sys.executable).parent

    def in_a_venv(p: str) -> bool:  # this venv, or another one activated in the shell
        d = Path(p).resolve()
        return d == here.resolve() or (d.parent / "pyvenv.cfg").exists()

    system_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and not in_a_venv(p))
    path = shutil.which(name, path=system_path)
    if path is None:
        venv_bin = here / name
        if venv_bin.exists():
            return str(venv_bin)
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="session")
def medsam2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random checkpoint in MedSAM2's exact format (``{"model": state_dict}`` of the
    512-px Hiera-tiny), once per session. Random weights: never a trained model."""
    torch = pytest.importorskip("torch")
    medsam2 = pytest.importorskip("autoprompt_seg.models.medsam2")
    torch.manual_seed(0)
    model = medsam2.build_model("cpu")
    p = tmp_path_factory.mktemp("medsam2") / "random_medsam2.pt"
    torch.save({"model": model.state_dict()}, p)
    return p
