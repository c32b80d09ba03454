"""``autoseg bench``: evaluate detector + segmenter combinations on a dataset.

A thin click layer over :mod:`autoprompt_seg.bench`, registered by ``cli/app.py``.
Library errors become one-line messages and exit codes through ``common.handle_errors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from ..types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE
from .common import (
    EXIT_HELP,
    F,
    dataset_options,
    device_option,
    handle_errors,
    json_option,
    make_settings,
    set_option,
    threads_option,
    weights_dir_option,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_HELP)
def bench() -> None:
    """Benchmark segmenters with automatic or manual (ground-truth) prompts.

    \b
    Example:
      autoseg bench run --dataset pycerr --detector candidates --segmenter classical \\
          --out bench-out/
      autoseg bench run --dataset pycerr --detector oracle --segmenter classical \\
          --prompt-protocol key-slice --jitter-shift 0.1 --jitter-scale 0.1 --seed 0 \\
          --out bench-out/
      autoseg bench report bench-out/
    """


#: A click option decorator (or a decorator applying several).
Decorator = Callable[[Any], Any]


def _apply(options: list[Decorator], f: F) -> F:
    out: Any = f
    for o in reversed(options):
        out = o(out)
    return out  # type: ignore[no-any-return]


#: ``bench run`` options that describe one method (each a BenchConfig field, or the cases
#: it runs on); with CONFIG.toml they come from the file.
_METHOD: list[Decorator] = [
    dataset_options,
    click.option("--roi", default="GTV-1", show_default=True,
                 help="RTSTRUCT ROI holding the tumour (pycerr, nsclc)."),
    click.option("--detector", default="candidates", show_default=True,
                 help="Detector name; 'oracle' = manual prompts simulated from the GT; 'none' "
                       "= no prompt (prompt-free segmenters)."),
    click.option("--segmenter", default="classical", show_default=True, help="Segmenter name."),
    click.option("--checkpoint", default=None,
                 help="Weights of the segmenter: a weights name or a file (folder for nnunet)."),
    click.option("--prompt-protocol", default="key-slice", show_default=True,
                 type=click.Choice(["key-slice", "every-k", "every-slice"]),
                 help="Manual prompt protocol (with --detector oracle)."),
    click.option("--every-k", "k", default=2, show_default=True, type=int,
                 help="Slices between boxes for --prompt-protocol every-k."),
    click.option("--jitter-shift", default=0.0, show_default=True, type=float,
                 help="Manual box centre jitter, fraction of the box size."),
    click.option("--jitter-scale", default=0.0, show_default=True, type=float,
                 help="Manual box size jitter, relative."),
    click.option("--seed", default=0, show_default=True, type=int, help="Jitter seed."),
    click.option("--match-dice", default=0.1, show_default=True, type=float,
                 help="Lesion match rule: a predicted and a GT lesion match when their pairwise "
                       "Dice exceeds this (0 = any overlap)."),
    click.option("--min-score", default=DEFAULT_MIN_SCORE, show_default=True,
                 type=click.FloatRange(0.0, 1.0),
                 help="Operating point: automatic boxes below this calibrated confidence are "
                       "not segmented."),
    click.option("--max-lesions", default=DEFAULT_MAX_LESIONS, show_default=True,
                 type=click.IntRange(min=1),
                 help="At most this many automatic boxes segmented per case (best first)."),
    click.option("--case", "cases", multiple=True, help="Evaluate only this case id "
                 "(repeatable)."),
    click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
                 default=None, help="Splits file from `autoseg bench splits`; with --split."),
    click.option("--split", "split_name", default=None,
                 help="Evaluate only the cases of this split (e.g. test) of --splits."),
    click.option("--no-masks", is_flag=True, help="Do not save predicted masks."),
    click.option("--no-cost", is_flag=True,
                 help="Skip the cost measurement (parameters, GFLOPs, warm latency)."),
    click.option("--cost-repeats", type=click.IntRange(min=1), default=3, show_default=True,
                 help="Timed warm runs of the cost measurement (median reported)."),
    set_option(),
]

#: ``bench run`` options that say how and where it runs (with or without CONFIG).
_RUN: list[Decorator] = [
    click.option("--no-overlays", is_flag=True, help="Do not draw per-case overlay PNGs."),
    click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
                 help="Where cases run: in this process (local, the default) or as Dask tasks."),
    click.option("--scheduler", default=None,
                 help="Dask scheduler address (default: a LocalCluster of --workers workers)."),
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="LocalCluster worker processes for --executor dask (default 2)."),
    device_option(None, "Where neural backends run (default auto, or the CONFIG's device)."),
    threads_option(None),
    weights_dir_option(),
]


def _names(options: list[Decorator]) -> tuple[str, ...]:
    def probe() -> None: ...

    _apply(options, probe)
    return tuple(str(p.name) for p in reversed(probe.__click_params__))  # type: ignore[attr-defined]


_METHOD_OPTIONS = _names(_METHOD)
_RUN_OPTIONS = _names(_RUN)


def _method_options(f: F) -> F:
    return _apply(_METHOD, f)


def _run_options(f: F) -> F:
    return _apply(_RUN, f)


@bench.command("run", epilog=EXIT_HELP)
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@_method_options
@_run_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Results folder (required without CONFIG); rerunning continues where a "
                   "run stopped.")
@click.pass_context
@handle_errors
def run_cmd(ctx: click.Context, config: str | None, out_dir: str | None,
            **opts: Any) -> None:
    """Evaluate segmenters on a dataset: one method from the options, or a whole study
    (methods x prompt modes x learning paradigms) from CONFIG.toml.

    Per-case rows are appended to OUT/cases.jsonl as each case finishes; cases already
    there for the same configuration are skipped, and finished training runs are reused.
    OUT/summary.md, OUT/report.html and OUT/summary.json summarise every configuration run
    into OUT. The CONFIG.toml format is in docs/bench.md (examples in docs/examples/).

    \b
    Example:
      autoseg bench run --dataset pycerr --detector oracle --jitter-shift 0.1 \\
          --jitter-scale 0.1 --out bench-out/
      autoseg bench run docs/examples/bench-paradigms-tiny.toml --out bench-out/
      autoseg bench run study.toml --executor dask --scheduler tcp://10.0.0.5:8786
    """
    run = _RunOptions(**{n: opts.pop(n) for n in _RUN_OPTIONS})
    show = not ctx.find_root().obj.quiet if ctx.find_root().obj else True
    if config is not None:
        flags = {p.name: p.opts[0] for p in ctx.command.params}
        given = [flags[n] for n in _METHOD_OPTIONS
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ConfigError(f"with CONFIG {config}, methods and dataset come from the file; "
                              f"remove {', '.join(given)}")
        _run_study(config, out_dir, run, show)
    else:
        if out_dir is None:
            raise ConfigError("--out is required without CONFIG")
        _run_method(_MethodOptions(**opts), out_dir, run, show)


@dataclass(frozen=True)
class _RunOptions:
    """How and where ``bench run`` runs (the ``_RUN`` options)."""

    no_overlays: bool
    executor: str | None
    scheduler: str | None
    workers: int | None
    device: str | None
    threads: int | None
    weights_dir: str | None


@dataclass(frozen=True)
class _MethodOptions:
    """One method from the command line (the ``_METHOD`` options)."""

    dataset: str
    dataset_path: str | None
    roi: str
    detector: str
    segmenter: str
    checkpoint: str | None
    prompt_protocol: str
    k: int
    jitter_shift: float
    jitter_scale: float
    seed: int
    match_dice: float
    min_score: float
    max_lesions: int
    cases: tuple[str, ...]
    splits_file: str | None
    split_name: str | None
    no_masks: bool
    no_cost: bool
    cost_repeats: int
    assignments: tuple[str, ...] = ()


def _run_study(config: str, out_dir: str | None, run: _RunOptions, show: bool) -> None:
    """``bench run CONFIG.toml``: the whole study; the run options override the file's."""
    from ..bench.study import load_study, run_study

    study = load_study(config)
    study = replace(study, executor=run.executor or study.executor,
                    scheduler=run.scheduler if run.scheduler is not None else study.scheduler,
                    device=run.device or study.device, workers=run.workers or study.workers,
                    threads=study.threads if run.threads is None else run.threads)
    out = Path(out_dir or study.out or "bench-out")
    settings = make_settings(study.device, study.threads, run.weights_dir)
    with _bench_progress(show) as (on_event, on_case, train_progress):
        summary = run_study(study, out, settings=settings, on_event=on_event,
                            on_case=on_case, train_progress=train_progress,
                            on_stage=lambda msg: on_event("stage", msg),
                            save_overlays=not run.no_overlays)
    _print_summary(summary, out)


def _method_cases(m: _MethodOptions) -> tuple[str, ...]:
    """``--case`` ids, after the cases of ``--split`` of ``--splits``."""
    if (m.splits_file is None) != (m.split_name is None):
        raise ConfigError(f"--splits and --split go together; got --splits {m.splits_file} "
                          f"and --split {m.split_name}")
    if m.splits_file is None or m.split_name is None:
        return m.cases
    from ..datasets import load_splits

    sp = load_splits(m.splits_file)
    if m.split_name not in sp["cases"]:
        raise ConfigError(f"--split {m.split_name!r} is not in {m.splits_file} (splits: "
                          f"{', '.join(sp['cases'])})")
    cases = tuple(sp["cases"][m.split_name]) + tuple(m.cases)
    if not cases:
        raise ConfigError(f"--split {m.split_name!r} of {m.splits_file} holds no case")
    return cases


def _run_method(m: _MethodOptions, out_dir: str, run: _RunOptions, show: bool) -> None:
    """``bench run --out DIR [method options]``: one method."""
    from ..bench.runner import BenchConfig, run_bench

    cases = _method_cases(m)
    options: dict[str, Any] = {}
    if m.checkpoint:
        from ..registry import checkpoint_options

        options = checkpoint_options(m.segmenter, m.checkpoint)
    if m.assignments:
        from ..registry import set_options

        options = set_options(options, m.assignments)
    cfg = BenchConfig(dataset=m.dataset, dataset_path=m.dataset_path, roi=m.roi,
                      detector=m.detector, segmenter=m.segmenter, protocol=m.prompt_protocol,
                      k=m.k, jitter_shift=m.jitter_shift, jitter_scale=m.jitter_scale,
                      seed=m.seed, match_dice=m.match_dice, cases=cases, options=options,
                      measure_cost=not m.no_cost, cost_repeats=m.cost_repeats,
                      min_score=m.min_score, max_lesions=m.max_lesions)
    settings = make_settings(run.device or "auto", run.threads or 0, run.weights_dir, options)
    with _bench_progress(show) as (on_event, on_case, _train):
        on_event("eval", f"{cfg.method} {cfg.mode}")
        summary = run_bench(cfg, out_dir, settings=settings, save_masks=not m.no_masks,
                            save_overlays=not run.no_overlays, on_case=on_case,
                            on_stage=lambda msg: on_event("stage", msg),
                            executor=run.executor or "local", scheduler=run.scheduler,
                            n_workers=run.workers or 2)
    _print_summary(summary, Path(out_dir))


@contextmanager
def _bench_progress(enabled: bool) -> Iterator[tuple[Any, Any, Any]]:
    """(on_event, on_case, train_progress) callbacks drawing rich progress bars on stderr:
    one bar per training run and per evaluated configuration; failed and skipped cases are
    printed above the bars."""
    if not enabled:
        yield (lambda kind, msg: None), (lambda i, n, row: None), (lambda d, t: None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    con = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=con) as prog:
        state: dict[str, Any] = {"eval": None, "train": None}

        def close_train() -> None:  # a reused (already finished) run reports no steps
            tid = state["train"]
            if tid is not None:
                t = prog.tasks[tid]
                prog.update(tid, total=t.total or 1, completed=t.total or 1)
                state["train"] = None

        def on_event(kind: str, msg: str) -> None:
            if kind in ("eval", "train", "done"):
                close_train()
            if kind == "eval":
                state["eval"] = prog.add_task(f"eval  {msg}", total=None)
            elif kind == "train":
                state["train"] = prog.add_task(f"train {msg}", total=None)
            elif kind == "plan":
                con.print(f"[bold]bench[/] {msg}")
            elif kind == "stage":
                con.print(f"[dim]{msg}[/]")

        def on_case(i: int, n: int, row: dict[str, Any]) -> None:
            if state["eval"] is None:
                state["eval"] = prog.add_task("eval", total=n)
            prog.update(state["eval"], total=n, advance=1)
            status = row.get("status")
            if status in ("failed", "skipped"):
                con.print(f"[yellow]{row.get('case_id')}: {status}:[/] {row.get('error')}")

        def train_progress(done: int, total: int) -> None:
            if state["train"] is None:
                state["train"] = prog.add_task("train", total=total)
            prog.update(state["train"], completed=done, total=total)

        yield on_event, on_case, train_progress


@bench.command("splits", epilog=EXIT_HELP)
@dataset_options
@click.option("--seed", default=0, show_default=True, type=int, help="Shuffle seed.")
@click.option("--fractions", default="0.7,0.1,0.2", show_default=True,
              help="train,val,test fractions of the patients.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Splits JSON file to write.")
@handle_errors
def splits_cmd(dataset: str, dataset_path: str | None, seed: int, fractions: str,
               out_file: str) -> None:
    """Write a seeded, patient-level train/val/test split of a dataset.

    \b
    Example:
      autoseg bench splits --dataset msd --dataset-path Task06_Lung/ --out splits.json
      autoseg bench run --dataset msd --dataset-path Task06_Lung/ --splits splits.json \\
          --split test --out bench-out/
    """
    from ..datasets import get_cases, make_splits, save_splits

    try:
        fr = [float(x) for x in fractions.split(",")]
    except ValueError as e:
        raise ConfigError(f"--fractions must be three numbers like 0.7,0.1,0.2; got "
                          f"{fractions!r}") from e
    sp = make_splits(get_cases(dataset, dataset_path), seed=seed, fractions=fr)
    save_splits(sp, out_file)
    click.echo(f"{out_file}: " + ", ".join(f"{k} {len(v)} case(s)"
                                           for k, v in sp["cases"].items()))


@bench.command("report", epilog=EXIT_HELP)
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@json_option("Print summary.json to stdout.")
@handle_errors
def report_cmd(results_dir: str, as_json: bool) -> None:
    """Rewrite the CSVs, summary.json, summary.md and report.html of RESULTS_DIR.

    \b
    Example:
      autoseg bench report bench-out/
    """
    from ..bench.outputs import write_outputs

    summary = write_outputs(results_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, Path(results_dir))


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    for g in summary["groups"]:
        m = g["metrics"]

        def f(name: str, d: int = 3, s: dict[str, Any] = m) -> str:
            v = s[name]
            return "–" if v["mean"] is None else f"{v['mean']:.{d}f}±{v['sd']:.{d}f}"

        name = g.get("label") or f"{g['method']} · {g['mode']}"
        click.echo(f"{name:<44} ok {g['n_ok']}/{g['n_cases']}  "
                   f"Dice {f('dice')}  HD95 {f('hd95_mm', 1)} mm  NSD@2 {f('nsd_2mm')}  "
                   f"Sens {f('sensitivity', 2)}  Prec {f('precision', 2)}  "
                   f"seg {f('segment_s', 2, g['cost'])} s")
    click.echo(f"report: {out / 'report.html'}  summary: {out / 'summary.md'}")
