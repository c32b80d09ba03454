"""The ``sam2`` segmenter: vanilla SAM 2.1 Hiera-tiny at 1024 px with medsam2's procedure.

Checkpoints are generated in Meta's format (``{"model": state_dict}``, seeded random
weights of the real architecture): they load strictly and are reported as untrained test
checkpoints, never as the pinned release.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg import registry
from autoprompt_seg.config import Settings

M = pytest.importorskip("autoprompt_seg.models.medsam2")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAM 2.1 Hiera-tiny with seeded random weights, saved as Meta's checkpoints are."""
    torch.manual_seed(1)
    model = M.build_model("cpu", variant=M.SAM2)
    p = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, p)
    return p


def test_registered_with_its_pinned_weights() -> None:
    spec = registry.get("segmenter", "sam2")
    assert spec.weights == ("sam2.1_hiera_tiny",) and spec.factory.endswith(":create_sam2")
    from autoprompt_seg.weights import load_manifest

    e = load_manifest()["sam2.1_hiera_tiny"]
    assert e.architecture == M.SAM2.architecture and len(e.sha256) == 64
    o = M.MedSAM2Options.from_settings(Settings(options={"sam2": {"checkpoint": "x.pt"},
                                                         "sam2_empty_stop": 2}), M.SAM2)
    assert o.checkpoint == "x.pt" and o.empty_stop == 2 and o.scaling == "study-minmax"
    assert M.MedSAM2Options.from_settings(Settings(), M.SAM2).checkpoint == "sam2.1_hiera_tiny"


def test_meta_format_checkpoint_loads_strictly(sam2_ckpt: Path, tmp_path: Path) -> None:
    from autoprompt_seg import weights as W

    model = M.load_model(sam2_ckpt, variant=M.SAM2)  # strict=True inside
    assert model.image_size == 1024
    # RoPE sizes are not in the weights: 64x64 for 1024 px (MedSAM2's 512 px: 32x32)
    assert model.memory_attention.layers[0].cross_attn_image.freqs_cis.shape[0] == 64 * 64
    assert len(M.read_checkpoint(sam2_ckpt)) == 471
    # the manifest pins the release's sha256: random weights cannot pass for it
    with pytest.raises(W.UnavailableError, match="manifest pins") as ei:
        W.add_weights(sam2_ckpt, None, tmp_path)  # the file name says which
    assert ei.value.exit_code == 69 and not (tmp_path / "sam2.1_hiera_tiny.pt").exists()
    W.check_fits(sam2_ckpt, "sam2.1_hiera_tiny")  # what `weights add` checks: it fits
    bad = tmp_path / "bare.pt"
    torch.save(M.read_checkpoint(sam2_ckpt), bad)  # not {"model": ...}
    with pytest.raises(Exception, match="'model'"):
        M.load_model(bad, variant=M.SAM2)


@pytest.mark.slow
def test_predict_end_to_end(sam2_ckpt: Path, tmp_path: Path) -> None:
    """A synthetic DICOM study, one manual box -> sam2 on the CPU -> SEG + report that say
    "untrained test checkpoint" (random weights) and name SAM 2.1's settings."""
    import pydicom

    from autoprompt_seg.predict import predict_path
    from autoprompt_seg.synthetic import synthetic_study

    study = synthetic_study(tmp_path / "study", shape=(10, 96, 96), spacing=(3.0, 2.0, 2.0),
                            n_tumours=1, seed=2, tumour_radius_mm=(3.0,))
    z, y, x = np.nonzero(study.chest.labels == 1)
    key = int(np.argmax((study.chest.labels == 1).sum(axis=(1, 2))))
    prompts = tmp_path / "boxes.json"
    prompts.write_text(json.dumps({"version": 1, "coordinates": "voxel", "boxes": [
        {"z": [int(z.min()), int(z.max()) + 1], "y": [int(y.min()), int(y.max()) + 1],
         "x": [int(x.min()), int(x.max()) + 1], "key_slice": key}]}))
    settings = Settings(device="cpu", threads=2, weights_dir=tmp_path / "w",
                        options={"sam2": {"checkpoint": str(sam2_ckpt)}, "prompts": str(prompts),
                                 "sam2_z_margin_mm": 0.0, "sam2_empty_stop": 1})
    res = predict_path(study.study_dir, tmp_path / "out", detector="oracle", segmenter="sam2",
                       settings=settings)
    info = res.prediction.segmenter
    assert info.name == "sam2" and info.trained is False
    assert info.details["image_size"] == 1024 and info.details["config"] == "sam2.1_hiera_t.yaml"
    assert info.details["architecture"] == "sam2.1_hiera_tiny"
    report = json.loads(res.outputs["report"].read_text())
    seg_entry = report["backends"]["segmenter"]
    assert seg_entry["checkpoint_status"] == "untrained test checkpoint"
    assert "SAM 2.1" in seg_entry["details"]["note"]
    if res.prediction.lesions:
        ds = pydicom.dcmread(res.outputs["seg"])
        assert "UNTRAINED" in ds.ContentDescription
        algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "sam2"
