"""Real demo data: the four lung tumour CT studies inside the ``pycerr==2.5.1`` wheel.

The wheel is fetched with ``pip download --no-deps pycerr==2.5.1`` (through whatever
package index pip is configured for) and only the DICOM folders are unpacked into the
user cache. Licence: CC BY-NC 3.0 (Lambin et al., Radiomics Digital Phantom / NSCLC
Radiomics); see ``README_LICENSE.txt`` in the cache.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import UnavailableError

log = logging.getLogger(__name__)

PYCERR_VERSION = "2.5.1"
PYCERR_PREFIX = "cerr/datasets/radiomics_phantom_dicom/"
PYCERR_PATIENTS = ("pat_1", "pat_2", "pat_3", "pat_4")
DEMO_PATIENT = "pat_4"
GTV_ROI = "GTV-1"


def pycerr_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"pycerr-{PYCERR_VERSION}" / "radiomics_phantom_dicom"


def fetch_pycerr(cache_dir: Path) -> Path:
    """Return the folder holding ``pat_1..pat_4``, downloading the wheel on first use."""
    target = pycerr_dir(cache_dir)
    if all((target / p).is_dir() for p in PYCERR_PATIENTS):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"pycerr=={PYCERR_VERSION}", "-d", tmp]
        log.info("fetching the demo data: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pycerr-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise UnavailableError(f"cannot download pycerr=={PYCERR_VERSION} for the demo data "
                                   f"(pip: {tail[0]}); check the network or pip's index")
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [m for m in zf.namelist() if m.startswith(PYCERR_PREFIX)]
            for m in members:
                dest = staging / m[len(PYCERR_PREFIX):]
                if m.endswith("/"):
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        _publish(staging, target, lambda t: all((t / p).is_dir() for p in PYCERR_PATIENTS))
    return target


def pycerr_study(patient: str, cache_dir: Path) -> Path:
    if patient not in PYCERR_PATIENTS:
        raise ValueError(f"Argument 'patient' must be one of {PYCERR_PATIENTS}; got {patient!r}")
    return fetch_pycerr(cache_dir) / patient


def synthetic_demo_study(cache_dir: Path, seed: int = 0) -> Path:
    """The seeded synthetic demo study (a DICOM folder), written once into
    ``cache_dir/synthetic-seed{seed}`` and reused after that.

    It is written into a temporary folder beside the target and renamed into place, so an
    interrupted run leaves no half-written study."""
    from .synthetic import synthetic_study

    cache = Path(cache_dir)
    study_dir = cache / f"synthetic-seed{seed}"
    if any(study_dir.glob("*.dcm")):
        return study_dir
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        synthetic_study(Path(tmp) / "s", shape=(64, 256, 256), spacing=(2.5, 1.2, 1.2),
                        n_tumours=2, seed=seed)
        _publish(Path(tmp) / "s", study_dir, lambda t: any(t.glob("*.dcm")))
    return study_dir


def _publish(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename the finished ``staging`` folder to ``target``.

    Two processes may fetch the same data at once (two evaluation scripts, a test run and
    the listener). Whichever finishes second finds a complete ``target`` and keeps it:
    removing it would pull the files from under the first process while it reads them.
    Only an incomplete ``target`` (an interrupted run of an older version) is replaced."""
    if complete(target):
        return
    if target.exists():
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:  # another process renamed its copy in between
        if not complete(target):
            raise
