"""``autoseg listen`` and ``autoseg queue``: the DICOM node's command line.

Registered on the main ``autoseg`` group by :func:`register`. The commands raise
:class:`~autoprompt_seg.errors.AutosegError` subclasses; ``common.handle_errors`` turns
them into messages and exit codes. ``python -m autoprompt_seg.cli.listen`` runs the same
commands standalone (used by the tests that ``kill -9`` the node).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from ..types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE
from .common import device_option, handle_errors, json_option, weights_dir_option

NODE_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _node_logging(quiet: bool, debug: bool) -> None:
    """Timestamped INFO lines for the node (one per association, one per study)."""
    lg = logging.getLogger("autoprompt_seg.listen")
    if not any(getattr(h, "_autoseg_node", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(NODE_LOG_FORMAT))
        h._autoseg_node = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    lg.propagate = False
    lg.setLevel(logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO))


def _load_config(config_file: str | None, **flags: Any) -> Any:
    from ..listen.config import build_config, read_toml

    file_values = read_toml(config_file) if config_file else {}
    return build_config(file_values, **flags)


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--aet", default=None, help="Our AE title.  [default: AUTOSEG]")
@click.option("--host", default=None, help="Address to listen on.  [default: 0.0.0.0]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port.  [default: 11112]")
@click.option("--spool", type=click.Path(file_okay=False), default=None,
              help="Spool folder: received instances, job queue, results, outbox "
                   "(required here or in --config).")
@click.option("--dest", multiple=True, metavar="AET@HOST:PORT",
              help="Where to send each SEG by C-STORE (repeatable).")
@click.option("--allow", multiple=True, metavar="AET",
              help="Calling AE title allowed to connect (repeatable; default: any).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes running the pipeline (0 = receive only).  [default: 1]")
@click.option("--quiet-period", type=click.FloatRange(min=0), default=None,
              help="Seconds with no new instance, after the association ended, before a "
                   "study counts as complete.  [default: 10]")
@click.option("--max-associations", type=click.IntRange(min=1), default=None,
              help="Concurrent associations accepted.  [default: 10]")
@click.option("--min-free-mb", type=click.FloatRange(min=0), default=None,
              help="Free-space watermark of the spool: below it, C-STORE answers 0xA700.  "
                   "[default: 512]")
@click.option("--detector", default=None, help="Box proposer (as in predict).")
@click.option("--segmenter", default=None, help="Segmenter (as in predict).")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=None,
              help=f"Operating point (as in predict).  [default: {DEFAULT_MIN_SCORE}]")
@click.option("--max-lesions", type=click.IntRange(min=1), default=None,
              help=f"At most this many automatic lesions per study.  "
                   f"[default: {DEFAULT_MAX_LESIONS}]")
@device_option(None, "Where neural backends run.  [default: auto]")
@weights_dir_option()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with a [listen] table (flags override it; see docs/deploy.md).")
@click.option("--quiet-log", is_flag=True, help="Only warnings and errors in the log.")
@handle_errors
def listen(aet: str | None, host: str | None, port: int | None, spool: str | None,
           dest: tuple[str, ...], allow: tuple[str, ...], workers: int | None,
           quiet_period: float | None, max_associations: int | None,
           min_free_mb: float | None, detector: str | None, segmenter: str | None,
           min_score: float | None, max_lesions: int | None,
           device: str | None, weights_dir: str | None, config_file: str | None,
           quiet_log: bool) -> None:
    """Run a DICOM node that segments every CT study it receives and sends the SEG on.

    It answers C-ECHO and C-STORE (CT Image and Enhanced CT Image Storage), writes each
    instance durably into the spool before answering, and queues a study once its
    association ended and --quiet-period seconds passed with no new instance. Workers run
    the same pipeline as `autoseg predict`; the SEG goes to every --dest by C-STORE,
    with retries, and stays in the spool's outbox until accepted. Survives restarts:
    whatever was received but not finished is picked up again. Stop with SIGTERM/Ctrl-C.

    \b
    Examples:
      autoseg listen --spool /var/spool/autoseg --dest PACS@10.0.0.5:4242
      autoseg listen --aet AUTOSEG --port 11112 --spool /srv/spool \\
          --dest ORTHANC@127.0.0.1:4242 --allow ORTHANC --allow CT01 --workers 2
      autoseg listen --config /etc/autoseg/listen.toml
      echoscu -aec AUTOSEG 127.0.0.1 11112          # check it answers
      storescu -aec AUTOSEG +sd +r 127.0.0.1 11112 study/   # send a study
    """
    from ..listen.node import Node

    cfg = _load_config(config_file, aet=aet, host=host, port=port, spool=spool,
                       dest=list(dest) or None, allow=list(allow) or None, workers=workers,
                       quiet_period=quiet_period, max_associations=max_associations,
                       min_free_mb=min_free_mb, detector=detector, segmenter=segmenter,
                       min_score=min_score, max_lesions=max_lesions,
                       device=device, weights_dir=weights_dir)
    from .. import registry

    for kind, name in (("detector", cfg.detector), ("segmenter", cfg.segmenter)):
        registry.get(kind, name)  # unknown names fail now, not in the first job
    _node_logging(quiet_log, logging.getLogger("autoprompt_seg").level == logging.DEBUG)
    Node(cfg).serve_forever()


# --------------------------------------------------------------------------- queue


def _spool_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     default=None, help="TOML file giving the spool.")(f)
    return click.option("--spool", type=click.Path(file_okay=False), default=None,
                        help="The node's spool folder.")(f)


def _open_queue(spool: str | None, config_file: str | None) -> tuple[Any, Any]:
    from ..listen.config import read_toml
    from ..listen.queue import JobQueue
    from ..listen.spool import Spool

    if spool is None and config_file:
        spool = read_toml(config_file).get("spool")
    if spool is None:
        raise ConfigError("Argument 'spool' is required (--spool DIR or --config FILE); "
                          "got nothing")
    root = Path(spool)
    if not (root / "queue.sqlite").is_file():
        raise ConfigError(f"Argument 'spool': {str(root)!r} holds no job queue "
                          "(queue.sqlite); is it the node's spool?")
    sp = Spool(root, min_free_bytes=0)
    return sp, JobQueue(sp.db_path)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else (f"{s / 60:.0f}m ago" if s < 7200
                                             else f"{s / 3600:.1f}h ago")


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
def queue() -> None:
    """Show the node's jobs (one per study) and retry or forget one.

    \b
    States: receiving, queued, running, sending (SEG in the outbox), sent,
    done (no tumour: nothing to send), failed (with its reason).

    \b
    Examples:
      autoseg queue list --spool /var/spool/autoseg
      autoseg queue list --spool /var/spool/autoseg --state failed --json
      autoseg queue retry 12 --spool /var/spool/autoseg
      autoseg queue forget 12 --spool /var/spool/autoseg
    """


@queue.command("list")
@_spool_option
@click.option("--state", default=None, help="Only jobs in this state.")
@json_option("JSON on stdout (with deliveries).")
@handle_errors
def queue_list(spool: str | None, config_file: str | None, state: str | None,
               as_json: bool) -> None:
    """List the jobs and their states.

    \b
    Example:
      autoseg queue list --spool /var/spool/autoseg
    """
    _sp, q = _open_queue(spool, config_file)
    try:
        jobs = q.jobs(state)
        if as_json:
            out = []
            for j in jobs:
                d = j.as_dict()
                d["deliveries"] = [dataclasses.asdict(x) for x in q.deliveries(j.id)]
                out.append(d)
            click.echo(json.dumps({"jobs": out, "counts": q.counts(),
                                   "refusals": len(q.refusals())}, indent=2))
            return
        if not jobs:
            click.echo("no jobs")
            return
        click.echo(f"{'ID':>4}  {'STATE':<9}  {'REV':>3}  {'INST':>5}  {'DUP':>4}  "
                   f"{'TRIES':>5}  {'LESIONS':>7}  {'UPDATED':>9}  STUDY / REASON")
        for j in jobs:
            click.echo(f"{j.id:>4}  {j.state:<9}  {j.revision:>3}  {j.instances:>5}  "
                       f"{j.duplicates:>4}  {j.attempts:>5}  "
                       f"{'-' if j.lesions is None else j.lesions:>7}  {_ago(j.updated):>9}  "
                       f"{j.study_uid}")
            if j.reason:
                click.echo(f"{'':>6}{j.reason}")
    finally:
        q.close()


@queue.command("retry")
@click.argument("job_id", metavar="ID", type=int)
@_spool_option
@handle_errors
def queue_retry(job_id: int, spool: str | None, config_file: str | None) -> None:
    """Process a failed (or done/sent) job again, or resend its SEG if only sending failed.

    \b
    Example:
      autoseg queue retry 12 --spool /var/spool/autoseg
    """
    _sp, q = _open_queue(spool, config_file)
    try:
        j = q.retry(job_id)
        click.echo(f"job {j.id}: {j.state} ({j.reason})")
    finally:
        q.close()


@queue.command("forget")
@click.argument("job_id", metavar="ID", type=int)
@_spool_option
@click.option("--keep-files", is_flag=True, help="Keep the study's files in the spool.")
@click.option("--force", is_flag=True, help="Also a running or sending job (stop the node "
              "first).")
@handle_errors
def queue_forget(job_id: int, spool: str | None, config_file: str | None, keep_files: bool,
                 force: bool) -> None:
    """Remove a job from the queue, with its received files, results and outbox SEG.

    \b
    Example:
      autoseg queue forget 12 --spool /var/spool/autoseg
    """
    from ..listen.queue import forget_job

    sp, q = _open_queue(spool, config_file)
    try:
        j = forget_job(q, sp, job_id, force=force, keep_files=keep_files)
    finally:
        q.close()
    click.echo(f"job {j.id} (study {j.study_uid}) forgotten"
               + ("" if keep_files else "; its files were removed"))


# --------------------------------------------------------------------------- wiring


def register(main: click.Group) -> None:
    """Add ``listen`` and ``queue`` to ``main``."""
    main.add_command(listen)
    main.add_command(queue)


@click.group()
def _standalone() -> None:
    """autoseg listen / queue (standalone entry point)."""
    logging.basicConfig(level=logging.WARNING, format=NODE_LOG_FORMAT, stream=sys.stderr)


if __name__ == "__main__":  # pragma: no cover - exercised by the tests as a subprocess
    register(_standalone)
    _standalone()
