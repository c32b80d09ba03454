"""Settings of the DICOM node (``autoseg listen``): defaults < TOML file < flags.

The TOML file holds one ``[listen]`` table (a file with only top-level keys also works)::

    [listen]
    aet = "AUTOSEG"
    port = 11112
    spool = "/var/spool/autoseg"
    dest = ["PACS@10.0.0.5:4242"]
    allow = ["ORTHANC", "CT01"]
    workers = 1
    quiet_period = 10.0

    [listen.tls]            # optional: DICOM over TLS (see docs/deploy.md)
    cert = "/etc/autoseg/node.crt"
    key = "/etc/autoseg/node.key"
    ca = "/etc/autoseg/ca.crt"   # given: peers must present a certificate signed by it
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE

_AET_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


def check_aet(value: str, argument: str) -> str:
    """An AE title: 1..16 printable ASCII characters, no backslash, not only spaces."""
    if not isinstance(value, str) or not _AET_RE.match(value) or "\\" in value \
            or not value.strip():
        raise ConfigError(f"Argument {argument!r} must be an AE title of 1 to 16 printable "
                          f"ASCII characters without a backslash; got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``PACS@[::1]:104``)."""
        m = re.match(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$",
                     text.strip() if isinstance(text, str) else "")
        if not m:
            raise ConfigError(f"Argument 'dest' must look like AET@HOST:PORT "
                              f"(e.g. PACS@10.0.0.5:4242); got {text!r}")
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ConfigError(f"Argument 'dest' has port {port} out of 1..65535; got {text!r}")
        return cls(check_aet(m["aet"], "dest"), m["host"].strip("[]"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the SCP (and for destinations with ``tls = true``)."""

    cert: Path
    key: Path
    ca: Path | None = None  # given: client certificates are required and checked

    def __post_init__(self) -> None:
        for name in ("cert", "key") + (("ca",) if self.ca else ()):
            p = getattr(self, name)
            if not Path(p).is_file():
                raise ConfigError(f"Argument 'tls.{name}' must be an existing file; got {str(p)!r}")


@dataclass(frozen=True)
class ListenConfig:
    """Everything the node needs. Validated on creation; errors name argument and value."""

    spool: Path
    aet: str = "AUTOSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    dest: tuple[Destination, ...] = ()
    allow: tuple[str, ...] = ()  # empty: any calling AE title
    workers: int = 1  # 0: receive only
    quiet_period: float = 10.0  # seconds with no new instance after release
    max_associations: int = 10
    min_free_mb: float = 512.0  # free-space watermark of the spool's file system
    max_attempts: int = 3  # processing attempts (crashes included) before 'failed'
    send_attempts: int = 20  # C-STORE attempts per destination before 'failed'
    retry_backoff: float = 5.0  # seconds; doubles each attempt
    retry_backoff_max: float = 300.0
    fsync: bool = True  # fsync file and folder before answering success
    detector: str = "candidates"
    segmenter: str = "classical"
    device: str = "auto"
    threads: int = 0
    min_score: float = DEFAULT_MIN_SCORE  # operating point (detector confidence, 0..1)
    max_lesions: int = DEFAULT_MAX_LESIONS  # at most this many automatic lesions per study
    weights_dir: Path | None = None
    log_patient: bool = False  # put PatientID in the per-study log line
    tls: TLSConfig | None = None
    dest_tls: bool = False  # speak TLS to the destinations too (uses tls.ca to verify)
    acse_timeout: float = 10.0
    dimse_timeout: float = 60.0
    network_timeout: float = 30.0
    poll_interval: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spool", Path(self.spool))
        check_aet(self.aet, "aet")
        object.__setattr__(self, "aet", self.aet.strip())
        object.__setattr__(self, "allow", tuple(check_aet(a, "allow") for a in self.allow))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"Argument 'port' must be an integer in 0..65535; got {self.port!r}")
        ints = {"workers": 0, "max_associations": 1, "max_attempts": 1, "send_attempts": 1,
                "threads": 0, "max_lesions": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"Argument {name!r} must be an integer >= {low}; got {v!r}")
        floats = {"quiet_period": 0.0, "min_free_mb": 0.0, "retry_backoff": 0.0,
                  "retry_backoff_max": 0.0, "acse_timeout": 0.1, "dimse_timeout": 0.1,
                  "network_timeout": 0.1, "poll_interval": 0.01}
        for fname, flow in floats.items():
            fv = getattr(self, fname)
            if not isinstance(fv, int | float) or isinstance(fv, bool) or fv < flow:
                raise ConfigError(f"Argument {fname!r} must be a number >= {flow:g}; "
                                  f"got {fv!r}")
            object.__setattr__(self, fname, float(fv))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"Argument 'device' must be one of auto, cpu, cuda; "
                              f"got {self.device!r}")
        if not isinstance(self.min_score, int | float) or isinstance(self.min_score, bool) \
                or not 0.0 <= float(self.min_score) <= 1.0:
            raise ConfigError(f"Argument 'min_score' must be a number in 0..1; "
                              f"got {self.min_score!r}")
        object.__setattr__(self, "min_score", float(self.min_score))
        if self.dest_tls and self.tls is None:
            raise ConfigError("Argument 'dest_tls' needs a [listen.tls] table; got dest_tls=true "
                              "without one")

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * 1024 * 1024)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1`` (exponential, capped)."""
        if attempts <= 0:
            return 0.0
        return float(min(self.retry_backoff * (2 ** (attempts - 1)), self.retry_backoff_max))


_FIELDS = {f.name for f in dataclasses.fields(ListenConfig)} - {"extra"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """The ``[listen]`` table of a TOML file (or its top level), as plain values."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Argument 'config' must be an existing TOML file; got {str(p)!r} "
                          "(no such file)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"Argument 'config': {str(p)!r} is not valid TOML ({e})") from e
    table = data.get("listen", data)
    if not isinstance(table, dict):
        raise ConfigError(f"Argument 'config': [listen] in {str(p)!r} must be a table")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(f"Argument 'config': unknown key(s) {', '.join(unknown)} in "
                          f"{str(p)!r}; known: {', '.join(sorted(_FIELDS))}")
    return dict(table)


def build_config(file_values: dict[str, Any] | None = None, **flags: Any) -> ListenConfig:
    """Merge TOML values and command-line flags (``None`` flags are ignored)."""
    values: dict[str, Any] = dict(file_values or {})
    for k, v in flags.items():
        if v is None or (isinstance(v, tuple | list) and not v and k in values):
            continue
        values[k] = v
    if "spool" not in values:
        raise ConfigError("Argument 'spool' is required (--spool DIR or spool = ... in the "
                          "config file); got nothing")
    if isinstance(values.get("dest"), str):
        values["dest"] = [values["dest"]]
    values["dest"] = tuple(d if isinstance(d, Destination) else Destination.parse(d)
                           for d in values.get("dest", ()))
    if isinstance(values.get("allow"), str):
        values["allow"] = [values["allow"]]
    values["allow"] = tuple(values.get("allow", ()))
    tls = values.get("tls")
    if isinstance(tls, dict):
        unknown = sorted(set(tls) - {"cert", "key", "ca"})
        if unknown or "cert" not in tls or "key" not in tls:
            raise ConfigError(f"Argument 'tls' must have cert and key (and optionally ca); "
                              f"got keys {sorted(tls)}")
        values["tls"] = TLSConfig(Path(tls["cert"]), Path(tls["key"]),
                                  Path(tls["ca"]) if tls.get("ca") else None)
    if values.get("weights_dir") is not None:
        values["weights_dir"] = Path(values["weights_dir"])
    try:
        return ListenConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad listener configuration: {e}") from e
