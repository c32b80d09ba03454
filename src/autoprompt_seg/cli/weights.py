"""``autoseg weights``: list, add, verify, locate and fetch model weights.

A thin click layer over :mod:`autoprompt_seg.weights`; library errors are turned into
one-line messages and exit codes by ``common.handle_errors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError, UnavailableError
from .common import EXIT_HELP, handle_errors, json_option, weights_dir_option

_weights_dir_option = weights_dir_option(
    "Folder of installed weights [env AUTOSEG_WEIGHTS_DIR; default: the user data folder, "
    "see `autoseg weights path`].")


def _wdir(weights_dir: str | None) -> Path:
    from ..config import default_weights_dir

    return Path(weights_dir) if weights_dir else default_weights_dir()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_HELP)
def weights() -> None:
    """Install and check model weights (MedSAM2, SAM 2.1, MedSAM, the nnU-Net detector).

    Only files listed in the weights manifest can be installed; each is loaded strictly
    before it is copied, and its sha256 is recorded. Provenance, shown by `list` and in
    every report and SEG: "pinned release" (the sha256 the manifest pins), "official
    download, hash not pinned" (fetched from the manifest's URL, its sha256 recorded
    and re-checked at every load), "pinned by the user" (`add --trust`), else an unknown
    file, reported as an untrained test checkpoint.

    \b
    Examples:
      autoseg weights list
      autoseg weights fetch MedSAM2_latest
      autoseg weights add ~/Downloads/MedSAM2_latest.pt
      autoseg weights add my_random.pt --name MedSAM2_latest --weights-dir /tmp/w
      autoseg weights add ~/models/MedSAM2_latest.pt --trust
      autoseg weights verify
    """


@weights.command("list", epilog=EXIT_HELP)
@_weights_dir_option
@json_option()
@handle_errors
def list_cmd(weights_dir: str | None, as_json: bool) -> None:
    """List the known weights and whether each is installed.

    \b
    Example:
      autoseg weights list --json
    """
    from ..weights import list_weights

    rows = list_weights(_wdir(weights_dir))
    if as_json:
        click.echo(json.dumps([dict(r.__dict__, state=r.state) for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"weights in {_wdir(weights_dir)}")
    for col in ("name", "state", "file", "architecture", "sha256", "installed"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.name, r.state, r.file, r.architecture, r.sha256[:16], r.added[:10])
    Console().print(t)


@weights.command("add", epilog=EXIT_HELP)
@click.argument("file", type=click.Path())
@click.option("--name", default=None,
              help="Manifest name (default: guessed from the file name, e.g. "
                   "MedSAM2_latest.pt -> MedSAM2_latest).")
@click.option("--trust", is_flag=True,
              help="Pin this file's sha256 locally: it is then reported as \"pinned by the "
                   "user\" instead of an untrained test checkpoint (only for a file you know "
                   "to be the genuine release; the manifest's own pins always win).")
@_weights_dir_option
@handle_errors
def add_cmd(file: str, name: str | None, trust: bool, weights_dir: str | None) -> None:
    """Check FILE (strict load, sha256) and copy it into the weights folder.

    \b
    Examples:
      autoseg weights add ~/Downloads/MedSAM2_CTLesion.pt
      autoseg weights add ~/Downloads/MedSAM2_latest.pt --name MedSAM2_latest --trust
    """
    from ..weights import add_weights

    rec = add_weights(file, name, _wdir(weights_dir), trust=trust)
    click.echo(f"{rec.name}: installed {_wdir(weights_dir) / rec.file}")
    click.echo(f"  sha256 {rec.sha256}")
    click.echo(f"  {rec.state}")
    if rec.origin == "trust":
        click.echo(f"  pinned locally in {_wdir(weights_dir) / 'installed.json'}: reported as "
                   f"\"pinned by the user\", not as a release pinned in the manifest")


@weights.command("verify", epilog=EXIT_HELP)
@_weights_dir_option
@click.option("--quick", is_flag=True, help="Only hashes; skip the strict load.")
@json_option()
@handle_errors
def verify_cmd(weights_dir: str | None, quick: bool, as_json: bool) -> None:
    """Recheck every installed file (sha256 and strict load). Exits 69 or 78 on a problem.

    \b
    Example:
      autoseg weights verify
    """
    from ..weights import verify

    res = verify(_wdir(weights_dir), deep=not quick)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in res], indent=2))
    else:
        if not res:
            click.echo(f"no weights installed in {_wdir(weights_dir)}")
        for r in res:
            state = f"ok, {r.state}" if r.ok else f"PROBLEM: {r.problem}"
            click.echo(f"{r.name}: {state}")
    bad = [r for r in res if not r.ok]
    if bad:
        msg = "; ".join(f"{r.name}: {r.problem}" for r in bad)
        if any(r.exit_code == 69 for r in bad):
            raise UnavailableError(msg)
        raise ConfigError(msg)


@weights.command("path", epilog=EXIT_HELP)
@click.argument("name", required=False)
@_weights_dir_option
@handle_errors
def path_cmd(name: str | None, weights_dir: str | None) -> None:
    """Print the weights folder, or the path of the installed NAME.

    \b
    Examples:
      autoseg weights path
      autoseg weights path MedSAM2_latest
    """
    from ..weights import installed_path, load_manifest

    wdir = _wdir(weights_dir)
    if name is None:
        click.echo(str(wdir))
        return
    manifest = load_manifest()
    if name not in manifest:
        raise ConfigError(f"Argument 'name' must be one of {', '.join(manifest)}; got {name!r}")
    p = installed_path(name, wdir)
    if p is None:
        raise UnavailableError(f"{name} is not installed in {wdir}: `autoseg weights fetch "
                               f"{name}` or `autoseg weights add FILE --name {name}`")
    click.echo(str(p))


@weights.command("fetch", epilog=EXIT_HELP)
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for the server (to connect, and for each read).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Resume an interrupted or stalled transfer this many times.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_weights_dir_option
@handle_errors
def fetch_cmd(name: str, timeout: float, retries: int, quiet: bool,
              weights_dir: str | None) -> None:
    """Download NAME from the manifest's URL, check it and install it.

    The transfer goes to a hidden .part file in the weights folder and resumes from it
    (HTTP Range) after an interruption, in this run or the next. The size and, where the
    manifest pins one, the sha256 are checked; the file must load strictly; only then is
    it moved into place. Proxies come from HTTPS_PROXY / HTTP_PROXY / NO_PROXY. Without
    network it fails (exit 69) and names the manual alternative (`weights add`).

    \b
    Examples:
      autoseg weights fetch MedSAM2_latest
      HTTPS_PROXY=http://proxy:3128 autoseg weights fetch sam2.1_hiera_tiny
    """
    from ..weights import fetch

    wdir = _wdir(weights_dir)
    if quiet:
        rec = fetch(name, wdir, timeout=timeout, retries=retries)
    else:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress("[progress.description]{task.description}", BarColumn(),
                      DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(f"fetch {name}", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            rec = fetch(name, wdir, timeout=timeout, retries=retries, progress=progress)
    click.echo(f"{rec.name}: installed {wdir / rec.file}")
    click.echo(f"  sha256 {rec.sha256}")
    click.echo(f"  {rec.state} ({rec.source}, {rec.added[:10]})")


@weights.command("add-nnunet", epilog=EXIT_HELP)
@click.argument("source", type=click.Path())
@click.option("--name", required=True,
              help="Name to install it under (a manifest name such as totalseg_lung_nodules, "
                   "or any plain folder name of yours).")
@click.option("--configuration", default=None,
              help="nnU-Net configuration to install (e.g. 3d_fullres) when the source holds "
                   "several.")
@click.option("--fold", "folds", multiple=True,
              help="Fold(s) to install: a number or 'all'; repeat or comma-separate for an "
                   "ensemble [default: every fold with the checkpoint].")
@click.option("--checkpoint-name", type=click.Choice(["checkpoint_final.pth",
                                                      "checkpoint_best.pth"]),
              default="checkpoint_final.pth", show_default=True,
              help="Which checkpoint of each fold.")
@click.option("--tumour-labels", default=None,
              help="Output labels that are the lesion, comma-separated numbers (e.g. 2) "
                   "[default: every foreground label].")
@click.option("--trainer-base", default=None,
              help="Stock nnunetv2 trainer to run a custom trainer as (only for trainers "
                   "that change training, not the network; see docs/detector.md).")
@click.option("--trust", is_flag=True,
              help="Pin the installed folder's sha256 locally (\"pinned by the user\"), for a "
                   "copy you know to be genuine.")
@_weights_dir_option
@handle_errors
def add_nnunet_cmd(source: str, name: str, configuration: str | None, folds: tuple[str, ...],
                   checkpoint_name: str, tumour_labels: str | None, trainer_base: str | None,
                   trust: bool, weights_dir: str | None) -> None:
    """Install any nnU-Net v2 model (an export zip, a TotalSegmentator zip or a folder).

    SOURCE is a zip made by nnUNetv2_export_model_to_zip, a TotalSegmentator weights zip
    (same layout), or a model folder.

    The layout is checked, zip members that could land outside the target are refused,
    every checkpoint must load strictly into the network nnU-Net builds from plans.json,
    and the model is staged in a hidden folder and renamed into place (nothing is
    installed on failure). The choices (configuration, folds, checkpoint, tumour labels,
    the stock trainer a custom trainer runs as) are recorded with it
    (autoseg_nnunet.json) and its sha256 in installed.json. Use it with
    `--detector nnunet_fullscan --detector-model NAME` or `--veto-model NAME`.

    An unknown trainer class is refused (exit 78) unless the table in docs/detector.md
    maps it or --trainer-base names its stock base.

    \b
    Examples:
      autoseg weights add-nnunet Dataset913_lung_nodules.zip --name totalseg_lung_nodules
      autoseg weights add-nnunet model.zip --name my_model --configuration 3d_fullres \\
          --fold 0 --tumour-labels 2
      autoseg weights add-nnunet ~/nnUNet_results/Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres \\
          --name my_model --checkpoint-name checkpoint_best.pth
    """
    from ..models.nnunet.install import InstallChoices, add_nnunet, parse_folds

    labels: tuple[int, ...] | None = None
    if tumour_labels:
        try:
            labels = tuple(int(v) for v in tumour_labels.split(",") if v.strip())
        except ValueError as e:
            raise ConfigError(f"--tumour-labels must be comma-separated label numbers; got "
                              f"{tumour_labels!r}") from e
    choices = InstallChoices(configuration=configuration, folds=parse_folds(list(folds) or None),
                             checkpoint_name=checkpoint_name, tumour_labels=labels,
                             trainer_base=trainer_base)
    wdir = _wdir(weights_dir)
    rec = add_nnunet(source, name, wdir, choices, trust=trust)
    from ..models.nnunet.install import read_installed

    m = read_installed(wdir / rec.file)
    click.echo(f"{rec.name}: installed {wdir / rec.file}")
    click.echo(f"  {m.dataset or '?'} {m.configuration}, fold(s) {', '.join(map(str, m.folds))}, "
               f"{m.checkpoint_name}")
    click.echo(f"  trainer {m.trainer} run as {m.trainer_base} ({m.trainer_rule})")
    click.echo(f"  tumour labels {', '.join(f'{v} ({n})' for v, n in zip(m.tumour_labels, m.label_names(m.tumour_labels)))}")
    click.echo(f"  sha256 {rec.sha256}")
    click.echo(f"  {rec.state}")
