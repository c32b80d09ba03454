"""The ``autoseg`` command. The only module that prints or exits.

Exit codes: 0 ok (also when no tumour was found), 65 bad input, 69 missing dependency or
weights, 70 backend failure, 73 output cannot be written, 78 configuration error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import __version__, registry
from ..errors import AutosegError, ConfigError
from ..types import DEFAULT_MAX_LESIONS, DEFAULT_MIN_SCORE
from .bench import bench as bench_group
from .common import (
    EXIT_HELP,
    Ctx,
    device_option,
    handle_errors,
    json_option,
    make_settings,
    set_option,
    setup_logging,
    stage_bars,
    stderr_console,
    threads_option,
    weights_dir_option,
)
from .detector import detector as detector_group
from .listen import register as register_listen
from .train import train as train_command
from .weights import weights as weights_group

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("autoprompt_seg")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_HELP)
@click.version_option(__version__, prog_name="autoseg")
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks on errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Automatic-prompt lung tumour segmentation in CT, with DICOM-SEG output.

    \b
    Example:
      autoseg predict path/to/study/ -o out/
      autoseg demo
    """
    ctx.obj = Ctx(debug=debug, quiet=quiet)
    setup_logging(debug, quiet)


# --------------------------------------------------------------------------- helpers


def backend_options(f: F) -> F:
    opts = [
        click.option("--detector", type=click.Choice(registry.names("detector")),
                     default=None, show_default=registry.DEFAULT_DETECTOR,
                     help="Box proposer. 'oracle' = manual prompts (implied by --prompts/"
                          "--prompts-from)."),
        click.option("--segmenter", type=click.Choice(registry.names("segmenter")),
                     default=registry.DEFAULT_SEGMENTER, show_default=True,
                     help="Box-prompted segmenter."),
        device_option(),
        threads_option(),
        click.option("--prompts", type=click.Path(dir_okay=False), default=None,
                     help="Manual prompts: a boxes JSON file (see docs/prompts.md)."),
        click.option("--prompts-from", type=click.Path(), default=None,
                     help="Manual prompts from ground truth: an RTSTRUCT, DICOM-SEG or "
                          "NIfTI/NRRD mask; one box per lesion."),
        click.option("--roi-name", default="GTV-1", show_default=True,
                     help="ROI of the RTSTRUCT given to --prompts-from."),
        click.option("--detector-model", type=click.Path(file_okay=False), default=None,
                     help="nnU-Net v2 model folder for --detector nnunet / --segmenter nnunet "
                          "(default: the installed nnunet_lung_detector weights); for "
                          "--detector nnunet_fullscan an installed model name (default "
                          "totalseg_lung_nodules) or folder."),
        click.option("--tta", is_flag=True,
                     help="nnU-Net mirroring test-time augmentation (8x slower; off by "
                          "default)."),
        click.option("--veto-model", default=None,
                     help="Anatomy veto for any detector: an installed nnU-Net model (e.g. "
                          "totalseg_trunk_cavities); boxes lying mostly in its pericardium or "
                          "mediastinum are dropped and listed in report.json. Off by default."),
        click.option("--checkpoint", "medsam2_checkpoint", default=None,
                     help="Weights of the segmenter: a weights name from `autoseg weights "
                          "list` or a file (medsam2 default MedSAM2_latest, sam2 default "
                          "sam2.1_hiera_tiny, medsam default "
                          "medsam_vit_b; unet/deeplabv3: a file from `autoseg train`; "
                          "nnunet: a model folder)."),
        weights_dir_option(),
        set_option(),
        click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=DEFAULT_MIN_SCORE,
                     show_default=True,
                     help="Operating point: segment only automatic boxes whose calibrated "
                          "confidence is at least this; the others are listed in report.json "
                          "as 'not segmented' (promote one with --prompts)."),
        click.option("--max-lesions", type=click.IntRange(min=1), default=DEFAULT_MAX_LESIONS,
                     show_default=True,
                     help="Segment at most this many automatic boxes (best first)."),
        click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
                     default="autoseg-output", show_default=True, help="Output folder."),
        json_option("Print a machine-readable JSON summary on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _run_predict(ctx: Ctx, study: str, *, detector: str | None, segmenter: str, device: str,
                 threads: int, prompts: str | None, prompts_from: str | None, roi_name: str,
                 detector_model: str | None, tta: bool, medsam2_checkpoint: str | None,
                 weights_dir: str | None, out_dir: str, as_json: bool,
                 veto_model: str | None = None,
                 min_score: float = DEFAULT_MIN_SCORE,
                 max_lesions: int = DEFAULT_MAX_LESIONS,
                 series: str | None = None, assignments: tuple[str, ...] = ()) -> None:
    from ..predict import predict_path

    if prompts and prompts_from:
        raise ConfigError("give either --prompts or --prompts-from, not both")
    if prompts or prompts_from:
        if detector not in (None, "oracle"):
            raise ConfigError(f"--prompts/--prompts-from need the oracle detector; got "
                              f"--detector {detector}")
        detector = "oracle"
    detector = detector or registry.DEFAULT_DETECTOR
    oracle: dict[str, Any] = {"roi_name": roi_name}
    options: dict[str, Any] = {"oracle": oracle}
    nnunet_opts: dict[str, Any] = {}
    if detector_model:
        nnunet_opts["model_dir"] = detector_model
    if tta:
        nnunet_opts["tta"] = True
    if nnunet_opts:
        options["nnunet"] = nnunet_opts
    if detector == "nnunet_fullscan" and (detector_model or tta):
        # an installed model name or folder (autoseg weights add-nnunet)
        options["nnunet_fullscan"] = {**({"model": detector_model} if detector_model else {}),
                                      **({"tta": True} if tta else {})}
    if veto_model:
        options["veto"] = {"model": veto_model}
    if medsam2_checkpoint:
        from ..registry import checkpoint_options

        for k, v in checkpoint_options(segmenter, medsam2_checkpoint).items():
            options[k] = {**options[k], **v} if isinstance(options.get(k), dict) else v
    if prompts:
        oracle["prompts"] = prompts
    if prompts_from:
        oracle["prompts_from"] = prompts_from
    options = registry.set_options(options, assignments)
    settings = make_settings(device, threads, weights_dir, options).with_(
        min_score=min_score, max_lesions=max_lesions)
    show = not (ctx.quiet or as_json)
    if show:
        stderr_console().print(f"[bold]autoseg[/] {study} -> {out_dir}  "
                        f"(detector {detector}, segmenter {segmenter})")
    with stage_bars(show) as stage_progress:
        res = predict_path(study, out_dir, detector=detector, segmenter=segmenter,
                           settings=settings, series_uid=series, stage_progress=stage_progress)
    pred = res.prediction
    if as_json:
        report = json.loads(res.outputs["report"].read_text())
        click.echo(json.dumps({"status": "ok", "lesions": len(pred.lesions),
                               "outputs": {k: str(v) for k, v in res.outputs.items()},
                               "report": report}, indent=2))
        return
    if ctx.quiet:
        return
    con = stderr_console()
    for w in res.warnings:
        con.print(f"[yellow]warning:[/] {w}")
    if not pred.lesions:
        con.print("[bold]No tumour found.[/] report.json records zero lesions; no SEG written.")
    else:
        vml = pred.volume.voxel_volume_ml
        for i, les in enumerate(pred.lesions, 1):
            conf = "manual prompt" if les.box.from_person else f"confidence {les.box.score:.2f}"
            con.print(f"  Lung tumour {i}: {les.voxel_count * vml:.1f} ml, key slice "
                      f"{les.box.key_slice}, {conf}")
    if pred.not_segmented:
        con.print(f"  {len(pred.not_segmented)} candidate(s) below the operating point "
                  "(listed in report.json, not segmented)")
    for _name, p in sorted(res.outputs.items()):
        click.echo(str(p))


# --------------------------------------------------------------------------- commands


@main.command(epilog=EXIT_HELP)
@click.argument("study", type=click.Path())
@click.option("--series", default=None, help="SeriesInstanceUID to segment (overrides the "
              "automatic choice; see `autoseg inspect`).")
@backend_options
@click.pass_obj
@handle_errors
def predict(ctx: Ctx, study: str, series: str | None, **kw: Any) -> None:
    """Segment the lung tumours of one study.

    STUDY is a folder tree of DICOM files (any names, with or without .dcm), or a
    NIfTI/NRRD file (research use: NIfTI output only, no DICOM-SEG).

    Writes into --out: seg.dcm (DICOM-SEG), mask.nii.gz (label map), report.json and
    preview.png. When no tumour is found, report.json records zero lesions and no SEG
    is written (exit 0).

    \b
    Examples:
      autoseg predict /data/CT_study/ -o out/
      autoseg predict /data/CT_study/ --prompts-from /data/CT_study/RS.dcm
      autoseg predict scan.nii.gz --json
    """
    _run_predict(ctx, study, series=series, **kw)


@main.command(epilog=EXIT_HELP)
@click.argument("study", type=click.Path())
@json_option()
@click.pass_obj
@handle_errors
def inspect(ctx: Ctx, study: str, as_json: bool) -> None:
    """List the series of a DICOM study and say which one `predict` would segment, and why.

    \b
    Example:
      autoseg inspect /data/CT_study/
    """
    from ..io.dicom import choose_series, scan_study

    series = scan_study(study)
    chosen, reason, error = None, "", ""
    try:
        chosen, reason = choose_series(series)
    except AutosegError as e:
        error = str(e)
    rows = [dict(s.summary(), chosen=(s is chosen)) for s in series]
    if as_json:
        click.echo(json.dumps({"series": rows, "chosen": chosen.series_uid if chosen else None,
                               "reason": reason or error}, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{study}: {len(series)} series")
    for col in ("", "modality", "instances", "rows x cols", "thickness", "description"):
        t.add_column(col)
    t.add_column("series UID", overflow="fold")
    for r in rows:
        t.add_row("*" if r["chosen"] else "", str(r["modality"]), str(r["instances"]),
                  f"{r['rows']}x{r['columns']}", str(r["slice_thickness"] or "-"),
                  str(r["description"]), str(r["series_uid"]))
    from rich.console import Console

    con = Console()
    con.print(t)
    con.print(f"chosen: {chosen.series_uid} — {reason}" if chosen else f"no series chosen: {error}")


@main.command(epilog=EXIT_HELP)
@weights_dir_option()
@click.option("--options", "options_of", default=None, metavar="NAME",
              help="List the options of backend NAME (keys for --set, types, defaults, "
                   "units) instead of the backends.")
@json_option()
@handle_errors
def backends(weights_dir: str | None, options_of: str | None, as_json: bool) -> None:
    """List the detectors and segmenters and whether each is ready (imports no torch).

    \b
    Examples:
      autoseg backends
      autoseg backends --options candidates
    """
    if options_of is not None:
        _list_options(options_of, as_json)
        return
    settings = make_settings("auto", 0, weights_dir, {})
    rows = []
    for b in registry.BACKENDS:
        state, hint = b.status(settings)
        rows.append({"name": b.name, "kind": b.kind, "state": state, "hint": hint,
                     "summary": b.summary, "traditional": b.traditional,
                     "default": b.name in (registry.DEFAULT_DETECTOR, registry.DEFAULT_SEGMENTER)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("kind", "name", "state", "what it is"):
        t.add_column(col)
    for r in rows:
        state = f"{r['state']}\n{r['hint']}" if r["hint"] else str(r["state"])
        t.add_row(str(r["kind"]), f"{r['name']}{' (default)' if r['default'] else ''}", state,
                  str(r["summary"]))
    Console().print(t)


def _list_options(name: str, as_json: bool) -> None:
    from ..options import describe_options

    rows = describe_options(registry.options_class(name))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"options of {name} (--set {name}.KEY=VALUE)")
    for col in ("key", "type", "default", "unit / meaning"):
        t.add_column(col)
    for r in rows:
        d = r["default"]
        t.add_row(f"{name}.{r['key']}", str(r["type"]),
                  json.dumps(d) if not isinstance(d, str) else d, str(r["help"]))
    Console().print(t)


@main.command(epilog=EXIT_HELP)
@click.option("--synthetic", is_flag=True,
              help="Use a seeded synthetic chest CT study with known tumours (no network).")
@click.option("--patient", type=click.Choice(["pat_1", "pat_2", "pat_3", "pat_4"]),
              default="pat_4", show_default=True, help="Which real demo study.")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic study seed.")
@backend_options
@click.pass_obj
@handle_errors
def demo(ctx: Ctx, synthetic: bool, patient: str, seed: int, **kw: Any) -> None:
    """Run predict on a real demo lung tumour CT (fetched once into the user cache).

    The demo studies are the four lung tumour CTs with RTSTRUCT ground truth inside the
    pycerr 2.5.1 wheel (CC BY-NC 3.0, Lambin et al.), fetched with
    `pip download --no-deps pycerr==2.5.1` into the cache (AUTOSEG_CACHE_DIR overrides).

    \b
    Examples:
      autoseg demo
      autoseg demo --synthetic -o synth-out/
    """
    from ..config import default_cache_dir

    cache = default_cache_dir()
    if synthetic:
        from ..data import synthetic_demo_study

        study = str(synthetic_demo_study(cache, seed))
    else:
        from ..data import pycerr_study

        if not (ctx.quiet or kw.get("as_json")):
            stderr_console().print(f"demo study: pycerr {patient} (cache {cache})")
        study = str(pycerr_study(patient, cache))
    _run_predict(ctx, study, **kw)


register_listen(main)
main.add_command(detector_group)
main.add_command(weights_group)
main.add_command(bench_group)
main.add_command(train_command)
for _group in main.commands.values():
    if "Exit codes" not in (_group.epilog or ""):
        _group.epilog = ((_group.epilog or "") + "\n\n" + EXIT_HELP).strip()

