"""Any nnU-Net v2 model: ``weights add-nnunet`` (nnU-Net's own export zips, TotalSegmentator-
style custom trainers, zip-slip), the ``nnunet_fullscan`` detector (lung crop, exact box
mapping, label selection) and the anatomy veto.

Every model here is a tiny *random-weight* model (the tiny detector plans of
``nnunet_helpers``) whose output bias is set so that one label wins everywhere: the answers
are known exactly. All nnU-Net code paths are nnunetv2's own (export, predictor,
resampling); nothing of nnunetv2 is mocked.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

from autoprompt_seg.config import Settings  # noqa: E402
from autoprompt_seg.errors import ConfigError  # noqa: E402
from autoprompt_seg.types import BackendInfo, Box3D, Volume  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from nnunet_helpers import TINY_PLANS, tiny_chest, volume_of  # noqa: E402

MOSAIC = "nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring"
PLANS_ID = "nnUNetPlans_autosegDetector"
CFG = "3d_detector"
NODULE_LABELS = {"background": 0, "lung": 1, "lung_nodules": 2}
CAVITY_LABELS = {"background": 0, "abdominal_cavity": 1, "thoracic_cavity": 2,
                 "pericardium": 3, "mediastinum": 4}


def _model_folder(out: Path, labels: dict[str, int], winner: int, trainer: str,
                  mirror: Any = (0, 1, 2), seed: int = 0) -> Path:
    """A random tiny model folder whose label ``winner`` wins everywhere."""
    from autoprompt_seg.models.nnunet.train import random_model_folder

    ds = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 6,
          "file_ending": ".nii.gz"}
    random_model_folder(out, copy.deepcopy(TINY_PLANS), CFG, ds, seed=seed, fold=0)
    ck_path = out / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    sd = ck["network_weights"]
    n = len(labels)
    key = [k for k in sd if k.endswith(".bias") and sd[k].shape == (n,)][-1]
    sd[key][:] = -30.0
    sd[key][winner] = 30.0
    ck["trainer_name"] = trainer
    ck["inference_allowed_mirroring_axes"] = mirror
    torch.save(ck, ck_path)
    return out


def _export(results: Path, dataset: str, trainer: str, out_zip: Path) -> Path:
    """nnU-Net's own export_pretrained_model over a results tree (nnUNet_results set for
    this call only: the exporter reads it; autoseg never does)."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    mdir = results / dataset / f"{trainer}__{PLANS_ID}__{CFG}"
    (mdir / "dataset_fingerprint.json").write_text("{}")
    (mdir / "fold_0" / "progress.png").write_bytes(b"\x89PNG not really")
    (mdir / "fold_0" / "validation").mkdir(exist_ok=True)
    (mdir / "fold_0" / "validation" / "summary.json").write_text("{}")
    old = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = str(results)
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            export_pretrained_model(dataset, str(out_zip), configurations=(CFG,),
                                    trainer=trainer, plans_identifier=PLANS_ID, folds=(0,))
    finally:
        if old is None:
            os.environ.pop("nnUNet_results", None)
        else:
            os.environ["nnUNet_results"] = old
    return out_zip


@pytest.fixture(scope="session")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet_zips")
    res = root / "results"
    out: dict[str, Path] = {}
    ds = "Dataset913_tiny_nodules"
    _model_folder(res / ds / f"nnUNetTrainer__{PLANS_ID}__{CFG}", NODULE_LABELS, 2,
                  "nnUNetTrainer")
    out["stock"] = _export(res, ds, "nnUNetTrainer", root / "stock.zip")
    ds2 = "Dataset914_tiny_mosaic"
    _model_folder(res / ds2 / f"{MOSAIC}__{PLANS_ID}__{CFG}", NODULE_LABELS, 2, MOSAIC,
                  mirror=None)
    out["mosaic"] = _export(res, ds2, MOSAIC, root / "mosaic.zip")
    ds3 = "Dataset915_tiny_fancy"
    _model_folder(res / ds3 / f"MyFancyTrainer__{PLANS_ID}__{CFG}", NODULE_LABELS, 2,
                  "MyFancyTrainer")
    out["fancy"] = _export(res, ds3, "MyFancyTrainer", root / "fancy.zip")
    ds4 = "Dataset343_tiny_cavities"
    _model_folder(res / ds4 / f"nnUNetTrainer__{PLANS_ID}__{CFG}", CAVITY_LABELS, 4,
                  "nnUNetTrainer")
    out["mediastinum"] = _export(res, ds4, "nnUNetTrainer", root / "mediastinum.zip")
    ds5 = "Dataset344_tiny_abdomen"
    _model_folder(res / ds5 / f"nnUNetTrainer__{PLANS_ID}__{CFG}", CAVITY_LABELS, 1,
                  "nnUNetTrainer")
    out["abdomen"] = _export(res, ds5, "nnUNetTrainer", root / "abdomen.zip")
    return out


@pytest.fixture(scope="session")
def wdir(zips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with the models installed (by the library call)."""
    from autoprompt_seg.models.nnunet.install import InstallChoices, add_nnunet

    w = tmp_path_factory.mktemp("weights")
    add_nnunet(zips["stock"], "nodules", w, InstallChoices(tumour_labels=(2,)))
    add_nnunet(zips["stock"], "lung_label", w, InstallChoices(tumour_labels=(1,)))
    add_nnunet(zips["mosaic"], "mosaic", w)
    add_nnunet(zips["mediastinum"], "cavities", w)
    add_nnunet(zips["abdomen"], "abdomen", w)
    return w


def _cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from autoprompt_seg.cli.weights import weights

    r = CliRunner().invoke(weights, list(args))
    return r.exit_code, r.output


# ------------------------------------------------------------------------- install


def test_exported_zip_layout_and_install(zips: dict[str, Path], wdir: Path) -> None:
    from autoprompt_seg import weights as W
    from autoprompt_seg.models.nnunet.install import read_installed

    names = zipfile.ZipFile(zips["stock"]).namelist()
    prefix = f"Dataset913_tiny_nodules/nnUNetTrainer__{PLANS_ID}__{CFG}/"
    assert prefix + "fold_0/checkpoint_final.pth" in names  # nnU-Net's own layout
    m = read_installed(wdir / "nodules")
    assert (m.dataset, m.trainer, m.trainer_base, m.configuration, m.folds) == (
        "Dataset913_tiny_nodules", "nnUNetTrainer", "nnUNetTrainer", CFG, (0,))
    assert m.tumour_labels == (2,) and m.label_names([2]) == ["lung_nodules"]
    assert m.source_sha256 == W.sha256_file(zips["stock"])
    # only the chosen model: no progress.png, summaries or fingerprint
    files = sorted(p.relative_to(wdir / "nodules").as_posix()
                   for p in (wdir / "nodules").rglob("*") if p.is_file())
    assert files == ["autoseg_nnunet.json", "dataset.json", "fold_0/checkpoint_final.pth",
                     "plans.json"]
    rec = json.loads((wdir / W.INSTALLED_JSON).read_text())["nodules"]
    assert rec["sha256"] == W.sha256_path(wdir / "nodules") and rec["origin"] == "add"
    assert not list(wdir.glob(".adding-*"))
    rows = {r.name: r for r in W.list_weights(wdir)}
    assert rows["nodules"].installed and rows["nodules"].state.startswith("unknown file")
    assert {r.name: r.ok for r in W.verify(wdir, deep=True)}["nodules"]


def test_custom_trainer_is_mapped(wdir: Path) -> None:
    from autoprompt_seg.models.nnunet.install import read_installed

    m = read_installed(wdir / "mosaic")
    assert m.trainer == MOSAIC and m.trainer_base == "nnUNetTrainerNoMirroring"
    assert "TotalSegmentator" in m.trainer_rule


def test_unknown_trainer_refused_with_78_then_trainer_base(zips: dict[str, Path],
                                                           tmp_path: Path) -> None:
    code, out = _cli("add-nnunet", str(zips["fancy"]), "--name", "fancy", "--weights-dir",
                     str(tmp_path))
    assert code == 78, out
    assert "MyFancyTrainer" in out and "--trainer-base" in out
    assert not (tmp_path / "fancy").exists() and not list(tmp_path.glob(".adding-*"))
    code, out = _cli("add-nnunet", str(zips["fancy"]), "--name", "fancy", "--weights-dir",
                     str(tmp_path), "--trainer-base", "nnUNetTrainer", "--tumour-labels", "2",
                     "--fold", "0", "--configuration", CFG)
    assert code == 0, out
    assert "run as nnUNetTrainer" in out and "2 (lung_nodules)" in out
    code, out = _cli("add-nnunet", str(zips["fancy"]), "--name", "fancy2", "--weights-dir",
                     str(tmp_path), "--trainer-base", "NotATrainer")
    assert code == 78 and "NotATrainer" in out


def test_bad_choices_are_config_errors(zips: dict[str, Path], tmp_path: Path) -> None:
    for extra, words in ((["--tumour-labels", "5"], "tumour_labels"),
                         (["--configuration", "2d"], "2d"),
                         (["--fold", "3"], "fold"),
                         (["--checkpoint-name", "checkpoint_best.pth"], "checkpoint_best")):
        code, out = _cli("add-nnunet", str(zips["stock"]), "--name", "x", "--weights-dir",
                         str(tmp_path), *extra)
        assert code == 78 and words in out, (extra, out)
    assert not (tmp_path / "x").exists()


def test_zip_slip_is_refused_and_nothing_is_written(zips: dict[str, Path],
                                                    tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(zips["stock"]) as src, zipfile.ZipFile(evil, "w") as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
        dst.writestr("../../escaped.txt", "gotcha")
    w = tmp_path / "w"
    code, out = _cli("add-nnunet", str(evil), "--name", "evil", "--weights-dir", str(w))
    assert code == 78 and "zip-slip" in out and "../../escaped.txt" in out
    assert not (w / "evil").exists() and not list(w.glob(".adding-*"))
    assert not (tmp_path / "escaped.txt").exists() and not (w.parent / "escaped.txt").exists()
    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as dst:
        dst.writestr("/etc/passwd_copy", "x")
    code, out = _cli("add-nnunet", str(absolute), "--name", "abs", "--weights-dir", str(w))
    assert code == 78 and "absolute path" in out


def test_plain_model_folder_and_manifest_defaults(zips: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """A plain folder installs too; a manifest name brings its defaults (TotalSegmentator's
    lung_nodules: label 2)."""
    from autoprompt_seg.models.nnunet.install import add_nnunet, read_installed

    src = tmp_path / "unzipped"
    with zipfile.ZipFile(zips["stock"]) as z:
        z.extractall(src)  # our own test zip
    folder = src / "Dataset913_tiny_nodules" / f"nnUNetTrainer__{PLANS_ID}__{CFG}"
    with pytest.raises(ConfigError, match="configuration"):
        add_nnunet(folder, "totalseg_lung_nodules", tmp_path / "w")  # manifest: 3d_fullres
    from autoprompt_seg.models.nnunet.install import InstallChoices

    add_nnunet(folder, "totalseg_lung_nodules", tmp_path / "w",
               InstallChoices(configuration=CFG))
    m = read_installed(tmp_path / "w" / "totalseg_lung_nodules")
    assert m.tumour_labels == (2,) and m.source_sha256 == ""


# -------------------------------------------------------------------- full scan


def _settings(w: Path, **options: Any) -> Settings:
    return Settings(device="cpu", threads=1, weights_dir=w, options=dict(options))


def test_fullscan_lung_crop_maps_boxes_back_exactly(wdir: Path) -> None:
    from autoprompt_seg.models.nnunet.fullscan import FullscanDetector, lung_crop

    vol = volume_of(tiny_chest(0))
    crop = lung_crop(vol, 4.0)
    assert crop is not None
    assert any((s.start, s.stop) != (0, n) for s, n in zip(crop, vol.shape, strict=True))
    det = FullscanDetector(_settings(wdir, nnunet_fullscan={
        "model": "nodules", "crop_margin_mm": 4.0, "margin_mm": 0.0}))
    boxes = det.detect(vol)
    # label 2 wins everywhere: one component, exactly the crop, in the original grid
    assert len(boxes) == 1
    b = boxes[0]
    assert (b.z0, b.z1, b.y0, b.y1, b.x0, b.x1) == (crop[0].start, crop[0].stop, crop[1].start,
                                                    crop[1].stop, crop[2].start, crop[2].stop)
    assert b.score > 0.99 and b.source == "nnunet_fullscan"
    info = det.info()
    assert info.details["last_crop_zyx"] == [[s.start, s.stop] for s in crop]
    assert info.details["tumour_label_names"] == ["lung_nodules"] and info.trained is False
    assert "untrained" in info.details["provenance"]
    # no crop: the whole volume
    det2 = FullscanDetector(_settings(wdir, nnunet_fullscan={"model": "nodules",
                                                            "crop": "none",
                                                            "margin_mm": 0.0}))
    (b2,) = det2.detect(vol)
    assert b2.size == vol.shape


def test_fullscan_crop_geometry_with_flipped_axes(wdir: Path) -> None:
    """The crop keeps the world position of every voxel, in any orientation."""
    from autoprompt_seg.models.nnunet.fullscan import FullscanDetector, crop_volume

    c = tiny_chest(1)
    d = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # flipped, permuted axes
    vol = volume_of(c, direction=d)
    crop = (slice(2, 20), slice(5, 40), slice(7, 31))
    sub = crop_volume(vol, crop)
    for idx in ((0, 0, 0), (17, 34, 23), (5, 6, 7)):
        assert np.allclose(sub.index_to_lps(*idx),
                           vol.index_to_lps(*(i + s.start for i, s in zip(idx, crop,
                                                                         strict=True))))
    det = FullscanDetector(_settings(wdir, nnunet_fullscan={"model": "nodules",
                                                           "margin_mm": 0.0}))
    (b,) = det.detect(vol)
    cz = det.last_crop
    assert cz is not None
    assert (b.z0, b.z1, b.y0, b.y1, b.x0, b.x1) == (cz[0].start, cz[0].stop, cz[1].start,
                                                    cz[1].stop, cz[2].start, cz[2].stop)


def test_tumour_label_selection(wdir: Path) -> None:
    """The same model installed with --tumour-labels 1 (a label that never wins) finds
    nothing; the custom-trainer model runs (as nnUNetTrainerNoMirroring)."""
    from autoprompt_seg.models.nnunet.fullscan import FullscanDetector

    vol = volume_of(tiny_chest(0))
    det = FullscanDetector(_settings(wdir, nnunet_fullscan={"model": "lung_label"}))
    assert det.detect(vol) == []
    mos = FullscanDetector(_settings(wdir, nnunet_fullscan={"model": "mosaic"}))
    assert len(mos.detect(vol)) == 1
    assert mos.info().details["trainer"] == MOSAIC
    assert mos.info().details["trainer_base"] == "nnUNetTrainerNoMirroring"


def test_fullscan_registry_and_options(wdir: Path) -> None:
    from autoprompt_seg import registry
    from autoprompt_seg.errors import UnavailableError

    spec = registry.get("detector", "nnunet_fullscan")
    assert spec.status(_settings(wdir))[0] == "weights missing"  # totalseg_lung_nodules
    det = spec.create(_settings(wdir, nnunet_fullscan={"model": "nodules"}))
    assert det.info().name == "nnunet_fullscan"
    with pytest.raises(ConfigError, match="crop"):
        spec.create(_settings(wdir, nnunet_fullscan={"model": "nodules", "crop": "heart"}))
    with pytest.raises(UnavailableError, match="add-nnunet"):
        spec.create(_settings(wdir, nnunet_fullscan={"model": "not_installed"}))


# -------------------------------------------------------------------------- veto


class _FixedDetector:
    """A detector that proposes the same two boxes (a test double for *our* protocol)."""

    def info(self) -> BackendInfo:
        return BackendInfo(name="fixed", kind="detector", version="0")

    def detect(self, volume: Volume, progress: Any = None) -> list[Box3D]:
        return [Box3D(z0=2, z1=6, y0=10, y1=20, x0=10, x1=20, key_slice=3, score=0.9),
                Box3D(z0=8, z1=12, y0=20, y1=30, x0=20, x1=30, key_slice=9, score=0.8)]


def test_veto_drops_boxes_inside_the_mediastinum(wdir: Path) -> None:
    from autoprompt_seg.models.nnunet.veto import VetoDetector, VetoOptions, wrap

    vol = volume_of(tiny_chest(0))
    s = _settings(wdir, veto={"model": "cavities"})
    det = wrap(_FixedDetector(), s)
    assert isinstance(det, VetoDetector)
    assert det.labels == (3, 4)  # pericardium, mediastinum by name
    info = det.info()
    assert det.detect(vol) == []  # everything is "mediastinum" in this model
    rec = info.details["veto"]  # the report's details (filled in by detect)
    assert rec["ran"] and len(rec["vetoed"]) == 2 and rec["vetoed"][0]["inside_frac"] == 1.0
    assert rec["labels"] == ["pericardium", "mediastinum"] and rec["trained"] is False
    keep = VetoDetector(_FixedDetector(), VetoOptions(model="abdomen"), s)
    assert len(keep.detect(vol)) == 2 and keep.record["vetoed"] == []
    assert wrap(_FixedDetector(), _settings(wdir)).__class__ is _FixedDetector  # off
    with pytest.raises(ConfigError, match="veto.labels"):
        VetoDetector(_FixedDetector(), VetoOptions(model="nodules"), s)  # no such labels


def test_veto_through_the_cli_and_report(wdir: Path, tmp_path: Path) -> None:
    """`autoseg predict --prompts P --veto-model cavities`: the boxes are vetoed and the
    veto is in report.json; `autoseg backends` lists nnunet_fullscan."""
    import SimpleITK as sitk
    from click.testing import CliRunner

    from autoprompt_seg.cli import main

    c = tiny_chest(0)
    img = sitk.GetImageFromArray(c.hu.astype(np.float32))
    img.SetSpacing((4.0, 4.0, 4.0))
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(ct))
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"version": 1, "coordinates": "voxel", "boxes": [
        {"z": [8, 14], "y": [20, 28], "x": [20, 28], "key_slice": 10}]}))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["predict", str(ct), "--prompts", str(prompts),
                                  "--veto-model", "cavities", "--weights-dir", str(wdir),
                                  "--device", "cpu", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    text = json.dumps(rep)
    assert '"veto"' in text and "mediastinum" in text and "inside_frac" in text
    r = CliRunner().invoke(main, ["backends", "--json", "--weights-dir", str(wdir)])
    rows = {(x["kind"], x["name"]): x for x in json.loads(r.output)}
    assert rows[("detector", "nnunet_fullscan")]["state"] == "weights missing"


def test_fetch_installs_an_nnunet_zip_as_an_official_download(
        zips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`weights fetch` of a manifest entry whose URL gives an nnU-Net zip: downloaded,
    checked and installed by add-nnunet, recorded as an official download."""
    import functools
    import http.server
    import threading

    from autoprompt_seg import weights as W
    from autoprompt_seg.models.nnunet.fullscan import FullscanDetector

    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(zips["stock"].parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{zips['stock'].name}"
        m = dict(W.load_manifest())
        m["tiny_zip"] = W.WeightsEntry(name="tiny_zip", file="tiny_zip",
                                       architecture="nnunetv2_model_folder", source=url)
        w = tmp_path / "w"
        rec = W.fetch("tiny_zip", w, manifest=m, timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rec.origin == "fetch" and rec.state == W.OFFICIAL and rec.source == url
    assert not list(w.glob(".*.part")) and not list(w.glob(".adding-*"))
    det = FullscanDetector(_settings(w, nnunet_fullscan={"model": "tiny_zip"}))
    assert det.info().trained is True  # an official download, by the recorded sha256
    assert "downloaded from its official source" in det.info().details["provenance"]
