"""Real demo data: the four lung tumour CT studies inside the ``pycerr==2.5.1`` wheel, and
two whole-chest CTs inside the ``pyradiomics-bhklab==3.1.4`` sdist.

Each is fetched with ``pip download --no-deps`` (through whatever package index pip is
configured for) and only the data files are unpacked into the user cache. Licences: pycerr's
studies CC BY-NC 3.0 (Lambin et al., Radiomics Digital Phantom / NSCLC Radiomics; see
``README_LICENSE.txt`` in the cache); the PyRadiomics test cases come with that package
(BSD-3-Clause), which does not state the scans' origin.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import UnavailableError

log = logging.getLogger(__name__)

PYCERR_VERSION = "2.5.1"
PYCERR_PREFIX = "cerr/datasets/radiomics_phantom_dicom/"
PYCERR_PATIENTS = ("pat_1", "pat_2", "pat_3", "pat_4")
DEMO_PATIENT = "pat_4"
GTV_ROI = "GTV-1"
PYRADIOMICS_VERSION = "3.1.4"
WHOLECHEST_CASES = ("lung1", "lung2")
TOTALSEG_VERSION = "2.18.0"
#: tumour-free CTs of TotalSegmentator's test files: name -> path below tests/reference_files/
NO_TUMOUR_CASES = {
    "chest CTA, full field": "aorta_report/example_ct.nii.gz",
    "heart CT, cropped": "pulmonary_report/models/ct_cropped.nii.gz",
    "abdomen and pelvis CT": "example_ct.nii.gz",
}


def pycerr_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"pycerr-{PYCERR_VERSION}" / "radiomics_phantom_dicom"


def fetch_pycerr(cache_dir: Path) -> Path:
    """Return the folder holding ``pat_1..pat_4``, downloading the wheel on first use."""
    target = pycerr_dir(cache_dir)
    _fetch_members(f"pycerr=={PYCERR_VERSION}", "pycerr-*.whl", PYCERR_PREFIX, target,
                   lambda t: all((t / p).is_dir() for p in PYCERR_PATIENTS), "the demo data")
    return target


def wholechest_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"pyradiomics-bhklab-{PYRADIOMICS_VERSION}" / "data"


def fetch_wholechest_cases(cache_dir: Path) -> Path:
    """Return the folder holding ``lung1`` and ``lung2`` (``{name}_image.nrrd``,
    ``{name}_label.nrrd``), downloading the sdist of ``pyradiomics-bhklab`` on first use.

    These are the lung test cases of PyRadiomics' ``data/`` folder: two whole-chest CTs
    at 5 mm slices with one labelled lesion each (lung1: a 1.4 ml nodule; lung2: a 48 ml
    tumour). The package does not state where the scans come from. They are for
    evaluation scripts (whole chests that no detector parameter was tuned on until
    2026-12-01), not for tests."""
    target = wholechest_dir(cache_dir)
    _fetch_members(f"pyradiomics-bhklab=={PYRADIOMICS_VERSION}",
                   f"pyradiomics_bhklab-{PYRADIOMICS_VERSION}.tar.gz",
                   f"pyradiomics_bhklab-{PYRADIOMICS_VERSION}/data/", target,
                   lambda t: all((t / f"{c}_{k}.nrrd").is_file() for c in WHOLECHEST_CASES
                                 for k in ("image", "label")),
                   "the whole-chest cases", keep=lambda name: name.startswith("lung"),
                   sdist=True)
    return target


def no_tumour_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"totalsegmentator-{TOTALSEG_VERSION}" / "reference_files"


def fetch_no_tumour_cases(cache_dir: Path) -> dict[str, Path]:
    """Three tumour-free CTs from the test files in the sdist of ``TotalSegmentator``
    (Apache-2.0; images from the TotalSegmentator data set, CC BY 4.0), downloaded on
    first use: the full field of view of the chest CTA that ``../shared`` holds cropped
    (1.5 mm, chest and upper abdomen), a cropped contrast heart CT of the pulmonary
    report test (1.5 mm) and an abdomen-pelvis CT (3 mm). For false-positive counts in
    evaluation scripts, not for tests."""
    target = no_tumour_dir(cache_dir)
    _fetch_members(f"totalsegmentator=={TOTALSEG_VERSION}",
                   f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz",
                   f"totalsegmentator-{TOTALSEG_VERSION}/tests/reference_files/", target,
                   lambda t: all((t / rel).is_file() for rel in NO_TUMOUR_CASES.values()),
                   "the tumour-free CTs", keep=lambda name: name in NO_TUMOUR_CASES.values(),
                   sdist=True)
    return {name: target / rel for name, rel in NO_TUMOUR_CASES.items()}


def _fetch_members(spec: str, pattern: str, prefix: str, target: Path,
                   complete: Callable[[Path], bool], what: str,
                   keep: Callable[[str], bool] = lambda name: True, sdist: bool = False) -> None:
    """Download the distribution ``spec`` with pip (a wheel or, with ``sdist``, its
    source archive; the file matching ``pattern``) and unpack its files under ``prefix``
    (those whose path below it passes ``keep``) into ``target``, unless
    ``complete(target)`` already holds."""
    if complete(target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", spec, "-d", tmp]
        if sdist:
            cmd[4:4] = ["--no-binary", spec.split("==")[0]]
        log.info("fetching %s: %s", what, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).glob(pattern))
        if proc.returncode != 0 or not files:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING")]
            tail = lines[-1:] or ["nothing downloaded"]
            raise UnavailableError(f"cannot download {spec} for {what} (pip: {tail[0]}); "
                                   "check the network or pip's index")
        staging = Path(tmp) / "unpacked"
        for name, read in _members(files[0]):
            if not name.startswith(prefix) or name.endswith("/"):
                continue
            rel = name[len(prefix):]
            if not keep(rel) or rel.startswith("/") or ".." in Path(rel).parts:
                continue
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with read() as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        _publish(staging, target, complete)


def _members(archive: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(name, opener) of each regular file of a wheel (zip) or an sdist (tar.gz)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for m in zf.namelist():
                yield m, (lambda m=m: zf.open(m))  # type: ignore[misc]
        return
    with tarfile.open(archive, "r:gz") as tf:
        for info in tf:
            if info.isfile():
                yield info.name, (lambda info=info: tf.extractfile(info))  # type: ignore[misc]


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
