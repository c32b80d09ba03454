"""Issue 12: the provenance states of a MedSAM2 checkpoint, end to end.

For each state the real ``medsam2`` segmenter is created from a weights folder (its model
loaded strictly), and its provenance goes through the real export: report.json, the SEG's
ContentDescription and AlgorithmParameters, and ``autoseg weights list``. The checkpoint is
the session's random one; only how it was installed differs (a pin in a patched manifest,
a download from a loopback server, ``add --trust``, a plain ``add``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

pytest.importorskip("sam2")

from autoprompt_seg import weights as W  # noqa: E402
from autoprompt_seg.config import Settings  # noqa: E402
from autoprompt_seg.export.writer import write_outputs  # noqa: E402
from autoprompt_seg.io.dicom import load_study  # noqa: E402
from autoprompt_seg.synthetic import synthetic_study  # noqa: E402
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Prediction  # noqa: E402

NAME = "MedSAM2_latest"
DETECTOR = BackendInfo(name="oracle", kind="detector", version="1")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    study = synthetic_study(tmp_path_factory.mktemp("prov") / "study", shape=(12, 64, 64),
                            spacing=(2.5, 1.5, 1.5), n_tumours=1, seed=4,
                            tumour_radius_mm=(6.0,))
    volume, _ = load_study(study.study_dir)
    return volume, study.chest.labels


def _outputs(info: BackendInfo, case: tuple[Any, Any], out: Path) -> tuple[dict[str, Any], Any]:
    volume, labels = case
    full = labels == 1
    z, y, x = np.nonzero(full)
    box = Box3D(int(z.min()), int(z.max()) + 1, int(y.min()), int(y.max()) + 1,
                int(x.min()), int(x.max()) + 1, key_slice=int(np.median(z)), from_person=True)
    pred = Prediction(volume=volume, lesions=(LesionMask.from_full(full, box),),
                      detector=DETECTOR, segmenter=info)
    paths = write_outputs(pred, out, input_info={}, preview=False)
    return json.loads(paths["report"].read_text()), pydicom.dcmread(paths["seg"])


def _listed(wdir: Path) -> str:
    from autoprompt_seg.cli.weights import weights

    r = CliRunner().invoke(weights, ["list", "--json", "--weights-dir", str(wdir)])
    assert r.exit_code == 0, r.output
    return str({row["name"]: row for row in json.loads(r.output)}[NAME]["state"])


def _info(wdir: Path, manifest: dict[str, W.WeightsEntry] | None = None) -> BackendInfo:
    from autoprompt_seg.models import medsam2 as M

    ctx: Any = (mock.patch("autoprompt_seg.weights.load_manifest", return_value=manifest)
                if manifest is not None else contextlib.nullcontext())
    with ctx:
        return M.create(Settings(device="cpu", weights_dir=wdir)).info()


def _algo_params(ds: Any) -> str:
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    return str(algo.AlgorithmParameters)


def test_unknown_file_and_user_pin(medsam2_checkpoint: Path, case: tuple[Any, Any],
                                   tmp_path: Path) -> None:
    wdir = tmp_path / "w"
    W.add_weights(medsam2_checkpoint, NAME, wdir)
    assert _listed(wdir) == "unknown file (untrained test checkpoint)"
    info = _info(wdir)
    assert not info.trained and info.details["provenance_state"] == W.UNKNOWN
    report, ds = _outputs(info, case, tmp_path / "o1")
    seg = report["backends"]["segmenter"]
    assert seg["checkpoint_status"] == "untrained test checkpoint" and seg["trained"] is False
    assert "no accuracy may be claimed" in seg["details"]["note"]
    assert "UNTRAINED test weights" in ds.ContentDescription
    assert "segmenter_checkpoint=untrained test checkpoint" in _algo_params(ds)

    rec = W.add_weights(medsam2_checkpoint, NAME, wdir, trust=True)
    assert rec.origin == "trust" and _listed(wdir) == W.USER_PIN
    info = _info(wdir)
    assert info.trained and info.details["provenance_state"] == W.USER_PIN
    assert "pinned by the user on" in info.details["provenance"]
    report, ds = _outputs(info, case, tmp_path / "o2")
    assert report["backends"]["segmenter"]["checkpoint_status"] == W.USER_PIN
    assert "user-pinned weights" in ds.ContentDescription
    assert "UNTRAINED" not in ds.ContentDescription
    assert "segmenter_checkpoint=pinned by the user" in _algo_params(ds)


def test_pinned_release(medsam2_checkpoint: Path, case: tuple[Any, Any],
                        tmp_path: Path) -> None:
    m = W.load_manifest()
    m[NAME] = replace(m[NAME], sha256=W.sha256_file(medsam2_checkpoint))
    wdir = tmp_path / "w"
    W.add_weights(medsam2_checkpoint, NAME, wdir, manifest=m)
    with mock.patch("autoprompt_seg.weights.load_manifest", return_value=m):
        assert _listed(wdir) == W.PINNED
    info = _info(wdir, m)
    assert info.trained and info.details["provenance_state"] == W.PINNED
    report, ds = _outputs(info, case, tmp_path / "o")
    assert report["backends"]["segmenter"]["checkpoint_status"] == W.PINNED
    assert "pinned release" in ds.ContentDescription
    assert "segmenter_checkpoint=pinned release" in _algo_params(ds)


def test_official_download(medsam2_checkpoint: Path, case: tuple[Any, Any], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from test_weights_fetch import Server

    for k in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Server(medsam2_checkpoint.read_bytes())
    try:
        m = W.load_manifest()
        m[NAME] = replace(m[NAME], source=srv.url)
        wdir = tmp_path / "w"
        W.fetch(NAME, wdir, manifest=m, timeout=10)
    finally:
        srv.close()
    assert _listed(wdir) == W.OFFICIAL
    info = _info(wdir)
    assert info.trained and info.details["provenance_state"] == W.OFFICIAL
    prov = info.details["provenance"]
    assert prov.startswith(f"{NAME}, downloaded from its official source on ")
    assert "not independently pinned" in prov and info.checkpoint_sha256 in prov
    report, ds = _outputs(info, case, tmp_path / "o")
    seg = report["backends"]["segmenter"]
    assert seg["checkpoint_status"] == W.OFFICIAL and seg["trained"] is True
    assert "untrained" not in json.dumps(seg)
    assert "official download, unpinned" in ds.ContentDescription
    assert "segmenter_checkpoint=official download; hash not pinned" in _algo_params(ds)
