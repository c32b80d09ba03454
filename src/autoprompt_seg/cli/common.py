"""Pieces shared by the ``autoseg`` command modules: the context object, logging, the one
error wrapper (library errors -> one-line message and documented exit code), the shared
option decorators and small helpers. Imports no command module."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import EXIT_CODES, AutosegError

F = TypeVar("F", bound=Callable[..., Any])

#: The exit-code table shown at the end of every command's --help.
EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())


class Ctx:
    def __init__(self, debug: bool = False, quiet: bool = False) -> None:
        self.debug = debug
        self.quiet = quiet


def setup_logging(debug: bool, quiet: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    handler = RichHandler(console=stderr_console(), show_path=debug, show_time=debug,
                          rich_tracebacks=debug)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("autoprompt_seg").setLevel(level if not debug else logging.DEBUG)


@functools.lru_cache(maxsize=1)
def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fail(ctx: Ctx, code: int, message: str) -> None:
    if ctx.debug:
        import traceback

        traceback.print_exc()
    click.echo(f"autoseg: error: {message}", err=True)
    sys.exit(code)


def handle_errors(f: F) -> F:
    """Turn library errors into one-line messages and documented exit codes.

    The single error mapping of the CLI: every command callback is wrapped in it.
    ``AutosegError`` -> its ``exit_code``; Ctrl-C -> 130; any other exception -> 70.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cctx = click.get_current_context(silent=True)
        ctx = (cctx.find_object(Ctx) if cctx is not None else None) or Ctx()
        try:
            return f(*args, **kwargs)
        except AutosegError as e:
            _fail(ctx, e.exit_code, with_flags(str(e)))
        except KeyboardInterrupt:
            _fail(ctx, 130, "interrupted")
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - last resort: unexpected bug
            _fail(ctx, 70, f"unexpected failure: {type(e).__name__}: {e}"
                  + ("" if ctx.debug else " (run with --debug for the traceback)"))

    return wrapper  # type: ignore[return-value]


def set_option() -> Callable[[F], F]:
    """``--set BACKEND.KEY=VALUE`` (repeatable), collected as ``assignments``."""
    return click.option(
        "--set", "assignments", multiple=True, metavar="BACKEND.KEY=VALUE",
        help="Set one backend option (repeatable), e.g. --set candidates.min_thickness_mm=4 "
             "or --set nnunet.folds=0,1; the value is read as the option's type (lists "
             "comma-separated). `autoseg backends --options NAME` lists a backend's options.")


#: option keys that a command-line flag sets; an error naming the key names the flag too
KEY_FLAGS: dict[str, str] = {
    "nnunet.model_dir": "--detector-model", "nnunet.tta": "--tta",
    "nnunet_fullscan.model": "--detector-model", "nnunet_fullscan.tta": "--tta",
    "veto.model": "--veto-model", "oracle.prompts": "--prompts",
    "oracle.prompts_from": "--prompts-from", "oracle.roi_name": "--roi-name",
    "medsam2.checkpoint": "--checkpoint", "sam2.checkpoint": "--checkpoint",
    "medsam.checkpoint": "--checkpoint",
}


def with_flags(message: str) -> str:
    """``message`` with the command-line flag of each option key it names."""
    flags = [f"{flag} sets {key}" for key, flag in KEY_FLAGS.items() if f"'{key}'" in message]
    return f"{message} ({'; '.join(flags)})" if flags else message


def make_settings(device: str, threads: int, weights_dir: str | Path | None,
             options: dict[str, Any] | None = None) -> Any:
    """The library ``Settings`` from the shared options."""
    from ..config import Settings, default_weights_dir

    return Settings(device=device, threads=threads,
                    weights_dir=Path(weights_dir) if weights_dir else default_weights_dir(),
                    options=options or {})


@contextmanager
def stage_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int, int], None] | None]]:
    """Yield a ``stage_progress(stage, total)`` factory backed by a rich progress bar."""
    if not enabled:
        yield lambda stage, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=stderr_console(),
                  transient=False) as prog:
        tasks: dict[str, Any] = {}

        def factory(stage: str, total: int) -> Callable[[int, int], None]:
            tid = prog.add_task(stage, total=total or None)
            tasks[stage] = tid

            def update(done: int, tot: int) -> None:
                prog.update(tid, completed=done, total=tot or None)

            return update

        try:
            yield factory
        finally:
            for tid in tasks.values():
                t = prog.tasks[tid]
                prog.update(tid, completed=t.total or 1, total=t.total or 1)


# --------------------------------------------------------------------------- shared options

DEVICES = ("auto", "cpu", "cuda")


def device_option(default: str | None = "auto",
                  help: str = "Where neural backends run.") -> Callable[[F], F]:
    """``--device auto|cpu|cuda``; with ``default=None`` the caller picks (e.g. a config
    file's value) and the help names the default."""
    return click.option("--device", type=click.Choice(DEVICES), default=default,
                        show_default=default is not None, help=help)


def threads_option(default: int | None = 0,
                   help: str = "CPU threads for neural backends (0 = library default)."
                   ) -> Callable[[F], F]:
    """``--threads N`` (0 = the library's default)."""
    return click.option("--threads", type=click.IntRange(min=0), default=default,
                        show_default=default is not None, help=help)


def weights_dir_option(help: str = "Folder of installed weights [env AUTOSEG_WEIGHTS_DIR]."
                       ) -> Callable[[F], F]:
    """``--weights-dir DIR`` (env ``AUTOSEG_WEIGHTS_DIR``); the value is a string or None."""
    return click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
                        envvar="AUTOSEG_WEIGHTS_DIR", help=help)


def json_option(help: str = "JSON on stdout.") -> Callable[[F], F]:
    """``--json`` flag, passed as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def dataset_options(f: F) -> F:
    """``--dataset`` and ``--dataset-path`` (bench run, bench splits, train)."""
    f = click.option("--dataset-path", type=click.Path(exists=True, file_okay=False),
                     default=None, help="Dataset root folder (not needed for pycerr).")(f)
    return click.option("--dataset", default="pycerr", show_default=True,
                        type=click.Choice(["pycerr", "nsclc", "msd", "pairs"]),
                        help="Dataset layout (see docs/bench.md).")(f)
