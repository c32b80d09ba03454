"""``autoseg bench``: evaluate detector + segmenter combinations on a dataset.

A thin click layer over :mod:`autoprompt_seg.bench`. Register it in ``cli.py`` with::

    from .cli_bench import bench as bench_group
    main.add_command(bench_group)

Library errors become one-line messages and exit codes through ``cli.handle_errors``,
imported when a command runs (no import cycle with ``cli.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cli_common import EXIT_HELP, handled

_handled = handled


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


@bench.command("run", epilog=EXIT_HELP)
@click.option("--dataset", default="pycerr", show_default=True,
              type=click.Choice(["pycerr", "nsclc", "msd", "pairs"]),
              help="Dataset layout (see docs/bench.md).")
@click.option("--dataset-path", type=click.Path(exists=True, file_okay=False), default=None,
              help="Dataset root folder (not needed for pycerr).")
@click.option("--roi", default="GTV-1", show_default=True,
              help="RTSTRUCT ROI holding the tumour (pycerr, nsclc).")
@click.option("--detector", default="candidates", show_default=True,
              help="Detector name; 'oracle' = manual prompts simulated from the GT.")
@click.option("--segmenter", default="classical", show_default=True, help="Segmenter name.")
@click.option("--prompt-protocol", default="key-slice", show_default=True,
              type=click.Choice(["key-slice", "every-k", "every-slice"]),
              help="Manual prompt protocol (with --detector oracle).")
@click.option("--every-k", "k", default=2, show_default=True, type=int,
              help="Slices between boxes for --prompt-protocol every-k.")
@click.option("--jitter-shift", default=0.0, show_default=True, type=float,
              help="Manual box centre jitter, fraction of the box size.")
@click.option("--jitter-scale", default=0.0, show_default=True, type=float,
              help="Manual box size jitter, relative.")
@click.option("--seed", default=0, show_default=True, type=int, help="Jitter seed.")
@click.option("--match-dice", default=0.1, show_default=True, type=float,
              help="Lesion match rule: a predicted and a GT lesion match when their pairwise "
                   "Dice exceeds this (0 = any overlap).")
@click.option("--case", "cases", multiple=True, help="Evaluate only this case id "
              "(repeatable).")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Splits file from `autoseg bench splits`; with --split.")
@click.option("--split", "split_name", default=None,
              help="Evaluate only the cases of this split (e.g. test) of --splits.")
@click.option("--no-masks", is_flag=True, help="Do not save predicted masks.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Results folder; rerunning continues where a run stopped.")
@_handled
def run_cmd(dataset: str, dataset_path: str | None, roi: str, detector: str, segmenter: str,
            prompt_protocol: str, k: int, jitter_shift: float, jitter_scale: float, seed: int,
            match_dice: float, cases: tuple[str, ...], splits_file: str | None,
            split_name: str | None, no_masks: bool, out_dir: str) -> None:
    """Evaluate one detector + segmenter on every case of a dataset.

    Per-case rows are appended to OUT/cases.jsonl as each case finishes; cases already
    there for the same configuration are skipped. OUT/report.md and OUT/summary.json
    summarise every configuration run into OUT.

    \b
    Example:
      autoseg bench run --dataset pycerr --detector oracle --jitter-shift 0.1 \\
          --jitter-scale 0.1 --out bench-out/
    """
    from .bench.runner import BenchConfig, run_bench
    from .errors import ConfigError

    if (splits_file is None) != (split_name is None):
        raise ConfigError(f"--splits and --split go together; got --splits {splits_file} "
                          f"and --split {split_name}")
    if splits_file is not None and split_name is not None:
        from .bench.datasets import load_splits

        sp = load_splits(splits_file)
        if split_name not in sp["cases"]:
            raise ConfigError(f"--split {split_name!r} is not in {splits_file} (splits: "
                              f"{', '.join(sp['cases'])})")
        cases = tuple(sp["cases"][split_name]) + tuple(cases)
        if not cases:
            raise ConfigError(f"--split {split_name!r} of {splits_file} holds no case")
    cfg = BenchConfig(dataset=dataset, dataset_path=dataset_path, roi=roi, detector=detector,
                      segmenter=segmenter, protocol=prompt_protocol, k=k,
                      jitter_shift=jitter_shift, jitter_scale=jitter_scale, seed=seed,
                      match_dice=match_dice, cases=cases)

    def on_case(i: int, n: int, row: dict[str, Any]) -> None:
        if row.get("resumed"):
            msg = "already done"
        elif row.get("status") == "ok":
            msg = (f"Dice {row['dice']:.3f}  TP/FP/FN {int(row['tp'])}/{int(row['fp'])}/"
                   f"{int(row['fn'])}  {row['segment_s']:.1f} s")
        else:
            msg = f"{row.get('status')}: {row.get('error')}"
        click.echo(f"[{i + 1}/{n}] {row['case_id']}: {msg}", err=True)

    summary = run_bench(cfg, out_dir, save_masks=not no_masks, on_case=on_case)
    _print_summary(summary, Path(out_dir))


@bench.command("splits", epilog=EXIT_HELP)
@click.option("--dataset", default="pycerr", show_default=True,
              type=click.Choice(["pycerr", "nsclc", "msd", "pairs"]), help="Dataset layout.")
@click.option("--dataset-path", type=click.Path(exists=True, file_okay=False), default=None,
              help="Dataset root folder (not needed for pycerr).")
@click.option("--seed", default=0, show_default=True, type=int, help="Shuffle seed.")
@click.option("--fractions", default="0.7,0.1,0.2", show_default=True,
              help="train,val,test fractions of the patients.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Splits JSON file to write.")
@_handled
def splits_cmd(dataset: str, dataset_path: str | None, seed: int, fractions: str,
               out_file: str) -> None:
    """Write a seeded, patient-level train/val/test split of a dataset.

    \b
    Example:
      autoseg bench splits --dataset msd --dataset-path Task06_Lung/ --out splits.json
      autoseg bench run --dataset msd --dataset-path Task06_Lung/ --splits splits.json \\
          --split test --out bench-out/
    """
    from .bench.datasets import get_cases, make_splits, save_splits
    from .errors import ConfigError

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
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
@_handled
def report_cmd(results_dir: str, as_json: bool) -> None:
    """Rewrite the CSVs, summary.json and report.md of RESULTS_DIR.

    \b
    Example:
      autoseg bench report bench-out/
    """
    from .bench.report import write_outputs

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

        click.echo(f"{g['method']:<24} {g['mode']:<20} ok {g['n_ok']}/{g['n_cases']}  "
                   f"Dice {f('dice')}  HD95 {f('hd95_mm', 1)} mm  NSD@2 {f('nsd_2mm')}  "
                   f"Sens {f('sensitivity', 2)}  Prec {f('precision', 2)}  "
                   f"seg {f('segment_s', 2, g['cost'])} s")
    click.echo(f"report: {out / 'report.md'}")
