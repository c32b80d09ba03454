"""Typed errors. Each carries the exit code that the CLI uses (sysexits.h values).

| exit | meaning                                  | class                |
|------|------------------------------------------|----------------------|
| 0    | success (also: no tumour found)          |                      |
| 65   | bad input data (EX_DATAERR)              | InputError           |
| 69   | missing dependency or weights (EX_UNAVAILABLE) | UnavailableError |
| 70   | backend failure (EX_SOFTWARE)            | BackendError         |
| 73   | output cannot be written (EX_CANTCREAT)  | OutputError          |
| 78   | configuration error (EX_CONFIG)          | ConfigError          |
"""

from __future__ import annotations


class AutosegError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code: int = 70


class InputError(AutosegError):
    """The input data is unusable: no DICOM, broken geometry, corrupt file..."""

    exit_code = 65


class GeometryError(InputError):
    """A series fails a geometry check (missing slice, tilt, mixed orientation...)."""


class UnavailableError(AutosegError):
    """A dependency or model weights are missing."""

    exit_code = 69


class BackendError(AutosegError):
    """A detector or segmenter failed while running."""

    exit_code = 70


class OutputError(AutosegError):
    """The output cannot be written."""

    exit_code = 73


class ConfigError(AutosegError):
    """Bad configuration: unknown backend, bad option value, inconsistent settings."""

    exit_code = 78


EXIT_CODES: dict[int, str] = {
    0: "success (also when no tumour was found)",
    65: "bad input data",
    69: "missing dependency or model weights",
    70: "backend failure",
    73: "output folder cannot be written",
    78: "configuration error",
}
