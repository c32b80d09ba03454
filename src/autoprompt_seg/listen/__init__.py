"""``autoseg listen``: a DICOM node that receives CT studies, segments each complete study
and sends the DICOM-SEG back, without losing an instance.

* :mod:`.config` -- :class:`ListenConfig` (defaults < TOML < flags);
* :mod:`.spool`  -- durable file storage (temp file, fsync, rename; safe UID names);
* :mod:`.queue`  -- the SQLite (WAL) job queue and its state machine;
* :mod:`.scp`    -- the pynetdicom SCP policy and handlers;
* :mod:`.worker` -- worker processes running :func:`autoprompt_seg.predict.predict_path`;
* :mod:`.sender` -- C-STORE of the SEG to each destination;
* :mod:`.node`   -- :class:`Node`, which ties them together.

Nothing heavy is imported here.
"""

from __future__ import annotations

from .config import Destination, ListenConfig, build_config, read_toml

__all__ = ["Destination", "ListenConfig", "build_config", "read_toml"]
