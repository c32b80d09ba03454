"""The ``monai_retinanet`` detector (MONAI model zoo ``lung_nodule_ct_detection``).

Real MONAI code paths, no mocks. The checkpoint is generated once per session: seeded random
weights of the bundle's network, saved as the bundle's ``models/model.pt`` (a plain state
dict), with the classification bias set to 0 so that random weights give boxes above the
bundle's 0.02 score threshold. It is an untrained test checkpoint: its boxes mean nothing.

Equivalence with the bundle: the bundle folder is rebuilt in a temporary folder from
``tests/data/monai_lung_nodule_ct_detection/configs/inference.json`` (copied unchanged from
the model zoo, Apache-2.0, see the NOTICE.md there) plus the generated ``models/model.pt``,
and parsed with ``monai.bundle.ConfigParser``. Its ``detector`` (with ``network_def``,
``anchor_generator`` and ``detector_ops``), ``preprocessing`` and ``postprocessing`` run as
the bundle defines them. Where the bundle needs something this environment lacks, the test
does the same thing by hand, and says so:

* ``evaluator`` / ``inferer`` / ``handlers`` are the bundle's own ``scripts/`` classes on
  pytorch-ignite (not installed): the test does what they do -- load ``models/model.pt``
  strictly into ``network`` (``CheckpointLoader``'s default ``strict=True``), decide
  ``use_inferer`` as ``scripts/detection_inferer.py`` does (sliding window only when the
  image has at least as many voxels as ``infer_patch_size``), run ``detector`` in eval mode
  (``amp`` is CUDA autocast, a no-op on the CPU) and apply ``postprocessing``.
* ``whether_raw_luna16`` false (the default) loads with MONAI's default NIfTI reader and
  skips ``Spacingd`` (LUNA16 images were resampled beforehand); our studies are not
  resampled, so the test switches ``Spacingd`` on (``_disabled_`` false), which is the
  raw-data path minus its ITK reader (the ``itk`` package is not installed; both readers
  give the same RAS image of a NIfTI file).
* The stored inference.json predates the bundle's 0.6.0 ("remove meta_dict usage"): its
  ``EnsureChannelFirstd`` passes ``meta_key_postfix``, which MONAI 1.6 no longer accepts;
  the test drops that one argument. Nothing else in the config is changed.
* The bundle's sliding window (512 x 512 x 192) and patch sizes are NOT overridden: the small
  test CT (64 x 64 x 32) is smaller than the window, so both paths run the network once on
  the whole image, as the bundle does for such an image.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from autoprompt_seg import weights as W  # noqa: E402
from autoprompt_seg.config import Settings  # noqa: E402
from autoprompt_seg.errors import ConfigError  # noqa: E402
from autoprompt_seg.models.monai_retinanet import ARCHITECTURE, WEIGHTS_NAME  # noqa: E402
from autoprompt_seg.models.monai_retinanet.boxes import (  # noqa: E402
    image_box_corners,
    points_to_box,
    world_box_corners,
)
from autoprompt_seg.synthetic import oblique_direction  # noqa: E402
from autoprompt_seg.types import Box3D, Volume  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "monai_lung_nodule_ct_detection"
SHAPE = (32, 64, 64)  # z, y, x
SPACING = (1.5, 0.75, 0.75)  # z, y, x mm
FLIPPED = np.diag([-1.0, 1.0, -1.0])  # columns run to the patient's right, slices caudal


@pytest.fixture(scope="session")
def random_state_dict() -> dict[str, object]:
    from autoprompt_seg.models.monai_retinanet.network import build_network

    torch.manual_seed(0)
    net = build_network()
    with torch.no_grad():
        net.classification_head.cls_logits.bias.fill_(0.0)
    return net.state_dict()


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, random_state_dict) -> Path:
    """The bundle folder: configs/inference.json (copied) + models/model.pt (random)."""
    root = tmp_path_factory.mktemp("bundle") / "lung_nodule_ct_detection"
    shutil.copytree(DATA / "configs", root / "configs")
    (root / "models").mkdir()
    torch.save(random_state_dict, root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def ckpt(bundle_dir: Path) -> Path:
    return bundle_dir / "models" / "model.pt"


def _ct(direction: np.ndarray, origin=(12.5, -40.25, 100.0), seed: int = 0) -> Volume:
    """A small seeded 'chest': air-ish noise with three soft-tissue blobs."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-750.0, 150.0, SHAPE).astype(np.float32)
    zz, yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    for cz, cy, cx, r in ((10, 20, 40, 5), (20, 44, 18, 7), (24, 30, 50, 4)):
        m = ((zz - cz) * SPACING[0]) ** 2 + ((yy - cy) * SPACING[1]) ** 2 + \
            ((xx - cx) * SPACING[2]) ** 2 <= (r * 1.5) ** 2
        a[m] = rng.normal(40.0, 20.0, int(m.sum())).astype(np.float32)
    return Volume(array=a, spacing=SPACING, origin=origin, direction=direction,
                  source_format="synthetic")


def _settings(tmp: Path, ckpt: Path | None = None, **opts) -> Settings:
    o = dict(opts)
    if ckpt is not None:
        o["checkpoint"] = str(ckpt)
    return Settings(device="cpu", weights_dir=tmp / "weights", options={"monai_retinanet": o})


# --------------------------------------------------------------------------- strict load


def test_strict_load_of_the_bundle_format(ckpt: Path, tmp_path: Path,
                                          random_state_dict) -> None:
    from autoprompt_seg.models.monai_retinanet.checkpoint import check_checkpoint, load_network

    net = load_network(ckpt)
    assert not net.training
    sd = net.state_dict()
    assert sd.keys() == random_state_dict.keys()
    assert all(torch.equal(sd[k], random_state_dict[k]) for k in sd)
    # {"model": state_dict} is what CheckpointLoader also accepts
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": random_state_dict}, wrapped)
    check_checkpoint(wrapped)
    # weights add through weights.py's checks: an unknown file, an untrained checkpoint
    rec = W.add_weights(ckpt, WEIGHTS_NAME, tmp_path / "w")
    assert rec.architecture == ARCHITECTURE and not rec.known
    assert rec.state.startswith("unknown file")
    prov = W.checkpoint_provenance(W.sha256_file(ckpt), ARCHITECTURE, tmp_path / "w")
    assert prov.state == W.UNKNOWN


def test_wrong_keys_are_refused_by_name(tmp_path: Path, random_state_dict) -> None:
    from autoprompt_seg.models.monai_retinanet.checkpoint import load_network

    sd = dict(random_state_dict)
    del sd["regression_head.bbox_reg.bias"]
    sd["head.extra.weight"] = torch.zeros(3)
    bad = tmp_path / "model.pt"
    torch.save(sd, bad)
    with pytest.raises(ConfigError) as e:
        load_network(bad)
    msg = str(e.value)
    assert "1 missing key(s) (e.g. regression_head.bbox_reg.bias)" in msg
    assert "1 unexpected key(s) (e.g. head.extra.weight)" in msg and str(bad) in msg
    shaped = dict(random_state_dict)
    shaped["classification_head.cls_logits.bias"] = torch.zeros(5)
    torch.save(shaped, bad)
    with pytest.raises(ConfigError, match="shape mismatch.*cls_logits.bias: file \\(5,\\)"):
        load_network(bad)
    # weights add refuses it and installs nothing
    with pytest.raises(ConfigError, match="does not fit the monai_retinanet"):
        W.add_weights(bad, WEIGHTS_NAME, tmp_path / "w")
    assert not (tmp_path / "w" / "monai_lung_nodule_ct_detection.pt").exists()
    torch.save([1, 2], bad)
    with pytest.raises(ConfigError, match="is not a state dict"):
        load_network(bad)


def test_fetch_installs_an_official_download(ckpt: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``weights fetch`` of the manifest entry (its URL pointed at a loopback server that
    serves the generated model.pt) goes through the strict RetinaNet check and is then an
    official download; a file that does not load is deleted, nothing installed."""
    import functools
    import http.server
    import threading
    from dataclasses import replace

    from autoprompt_seg.models.monai_retinanet.detector import resolve_checkpoint

    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "srv"
    served.mkdir()
    shutil.copyfile(ckpt, served / "model.pt")
    (served / "bad.pt").write_bytes(b"not a torch file")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        m = W.load_manifest()
        wdir = tmp_path / "w"
        bad = dict(m, **{WEIGHTS_NAME: replace(m[WEIGHTS_NAME], source=f"{base}/bad.pt")})
        with pytest.raises(Exception, match="truncated or corrupt"):
            W.fetch(WEIGHTS_NAME, wdir, manifest=bad)
        assert not (wdir / m[WEIGHTS_NAME].file).exists()
        good = dict(m, **{WEIGHTS_NAME: replace(m[WEIGHTS_NAME], source=f"{base}/model.pt")})
        rec = W.fetch(WEIGHTS_NAME, wdir, manifest=good)
    finally:
        srv.shutdown()
        srv.server_close()
    assert rec.state == W.OFFICIAL and rec.origin == "fetch"
    choice = resolve_checkpoint(Settings(device="cpu", weights_dir=wdir), WEIGHTS_NAME)
    assert choice.trained and choice.state == W.OFFICIAL
    assert "not independently pinned" in choice.provenance


def test_manifest_entry() -> None:
    e = W.load_manifest()[WEIGHTS_NAME]
    assert e.architecture == ARCHITECTURE and e.sha256 == ""
    assert e.source.endswith("/model_lung_nodule_ct_detection.pt")


# --------------------------------------------------------------------------- geometry


def _brute_force(volume: Volume, corners_lps: np.ndarray) -> tuple[int, ...] | None:
    """Tight (z0, z1, y0, y1, x0, x1) of the voxels whose centres lie in the box that the
    corners span in index space (the definition in boxes.py), by checking every voxel."""
    inv = np.linalg.inv(volume.affine_lps())
    idx = (np.c_[corners_lps, np.ones(8)] @ inv.T)[:, :3]
    lo, hi = idx.min(0) - 1e-4, idx.max(0) + 1e-4
    zz, yy, xx = np.mgrid[:volume.shape[0], :volume.shape[1], :volume.shape[2]]
    inside = ((xx >= lo[0]) & (xx <= hi[0]) & (yy >= lo[1]) & (yy <= hi[1])
              & (zz >= lo[2]) & (zz <= hi[2]))
    if not inside.any():
        return None
    z, y, x = np.nonzero(inside)
    return (z.min(), z.max() + 1, y.min(), y.max() + 1, x.min(), x.max() + 1)


DIRECTIONS = {
    "axial": np.eye(3),
    "flipped": FLIPPED,
    "permuted_flipped": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "oblique": oblique_direction(25.0),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_world_box_lands_on_the_right_voxels(name: str) -> None:
    d = DIRECTIONS[name]
    vol = Volume(array=np.zeros((20, 30, 40), np.float32), spacing=(2.0, 0.7, 0.9),
                 origin=(-31.0, 17.5, 250.0), direction=d, source_format="synthetic")
    rng = np.random.default_rng(7)
    for _ in range(25):
        z0, y0, x0 = rng.integers(0, 15), rng.integers(0, 25), rng.integers(0, 35)
        z1, y1, x1 = z0 + rng.integers(1, 5), y0 + rng.integers(1, 5), x0 + rng.integers(1, 5)
        # world box: LPS-axis-aligned bounds of the block's voxel centres, as cccwhd
        pts = np.array([vol.index_to_lps(z, y, x) for z in (z0, z1 - 1) for y in (y0, y1 - 1)
                        for x in (x0, x1 - 1)])
        lo, hi = pts.min(0), pts.max(0)
        corners = world_box_corners([*(lo + hi) / 2, *(hi - lo)])
        box = points_to_box(corners, vol, score=0.7)
        assert box is not None
        got = (box.z0, box.z1, box.y0, box.y1, box.x0, box.x1)
        assert got == _brute_force(vol, corners)
        if name != "oblique":  # axis-aligned grid: exactly the block
            assert got == (z0, z1, y0, y1, x0, x1)
        else:  # the world box holds the rotated block: the block is inside
            assert box.z0 <= z0 and box.z1 >= z1 and box.y0 <= y0 and box.y1 >= y1
            assert box.x0 <= x0 and box.x1 >= x1
        centre_k = (np.linalg.inv(vol.affine_lps()) @ np.r_[(lo + hi) / 2, 1.0])[2]
        assert abs(box.key_slice - np.clip(centre_k, box.z0, box.z1 - 1)) <= 0.5 + 1e-6
        assert box.source == "monai_retinanet" and not box.from_person


def test_boxes_outside_or_thinner_than_a_voxel() -> None:
    vol = Volume(array=np.zeros((10, 10, 10), np.float32), spacing=(1.0, 1.0, 1.0),
                 origin=(0.0, 0.0, 0.0), direction=FLIPPED, source_format="synthetic")
    far = world_box_corners([500.0, 500.0, 500.0, 5.0, 5.0, 5.0])
    assert points_to_box(far, vol, score=0.5) is None
    # a box between voxel centres keeps the voxel nearest its centre
    thin = world_box_corners([-3.2, 4.0, -6.0, 0.2, 2.0, 0.2])
    b = points_to_box(thin, vol, score=0.5)
    assert b is not None and (b.x0, b.x1, b.z0, b.z1) == (3, 4, 6, 7) and (b.y0, b.y1) == (3, 6)
    with pytest.raises(ValueError, match="cccwhd"):
        world_box_corners([0, 0, 0, -1, 1, 1])


@pytest.mark.parametrize("name", ["flipped", "oblique"])
def test_resampled_image_boxes_map_back_onto_the_study(name: str) -> None:
    """A bright cube found in the bundle-preprocessed image (RAS, 0.703 x 0.703 x 1.25 mm)
    maps back onto the cube's voxels in the study's own (flipped / oblique) grid."""
    from autoprompt_seg.models.monai_retinanet.preprocess import preprocess

    vol = _ct(DIRECTIONS[name])
    a = np.full(SHAPE, -1000.0, np.float32)
    a[8:20, 10:30, 30:50] = 300.0
    vol = vol.with_array(a)
    img = preprocess(vol)
    assert tuple(np.round(np.abs(np.linalg.svd(np.asarray(img.affine)[:3, :3])[1]), 6)) in {
        (1.25, 0.703125, 0.703125)}
    arr = np.asarray(img[0])
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    x, y, z = np.nonzero(arr > 0.5)
    box = points_to_box(image_box_corners([x.min(), y.min(), z.min(), x.max(), y.max(),
                                           z.max()], np.asarray(img.affine)), vol, score=1.0)
    assert box is not None
    got = np.array([box.z0, box.z1, box.y0, box.y1, box.x0, box.x1])
    want = np.array([8, 20, 10, 30, 30, 50])
    if name == "flipped":
        assert np.all(np.abs(got - want) <= 1), got
    else:  # the resampled grid is rotated with the study: within a voxel of the cube
        assert np.all(np.abs(got - want) <= 2), got
    assert box.key_slice in (13, 14)


# --------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="session")
def study_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import SimpleITK as sitk

    from autoprompt_seg.io.image import volume_to_sitk

    p = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(_ct(FLIPPED)), str(p))
    return p


def _bundle_inference(bundle: Path, image_path: Path) -> dict[str, np.ndarray]:
    """The bundle's own objects from its inference.json (module docstring)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["preprocessing#transforms#4#_disabled_"] = False  # Spacingd on (raw CT)
    # MONAI >= 1.3 has no meta_key_postfix on EnsureChannelFirstd (bundle 0.6.0 removed
    # the meta-dict usage from its config)
    parser["preprocessing#transforms#2"] = {"_target_": "EnsureChannelFirstd", "keys": "image"}
    network = parser.get_parsed_content("network")
    detector = parser.get_parsed_content("detector")
    parser.get_parsed_content("detector_ops")
    # handlers' CheckpointLoader (strict) on @bundle_root/models/model.pt
    sd = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(sd, strict=True)
    data = parser.get_parsed_content("preprocessing")({"image": str(image_path)})
    image = data["image"]
    # scripts/detection_inferer.py: sliding window only for images >= the window
    window = int(np.prod(detector.inferer.roi_size))
    use_inferer = not all(d[0, ...].numel() < window for d in [image])
    network.eval()
    detector.training = False
    with torch.no_grad():
        pred = detector([image], use_inferer=use_inferer)[0]
    out = parser.get_parsed_content("postprocessing")({**pred, "image": image})
    return {"box": np.asarray(out["box"], dtype=np.float64),
            "scores": np.asarray(out["label_scores"], dtype=np.float64),
            "use_inferer": np.asarray(use_inferer)}


def test_boxes_equal_the_bundle_inference(bundle_dir: Path, ckpt: Path, study_nifti: Path,
                                          tmp_path: Path) -> None:
    from autoprompt_seg.io.image import load_image
    from autoprompt_seg.models.monai_retinanet.detector import (
        RetinanetDetector,
        detections_to_boxes,
    )

    t0 = time.perf_counter()
    ref = _bundle_inference(bundle_dir, study_nifti)
    t_ref = time.perf_counter() - t0
    vol = load_image(study_nifti)
    det = RetinanetDetector(_settings(tmp_path, ckpt))
    raw = det.detect_raw(vol)
    assert not raw.used_sliding_window and not bool(ref["use_inferer"])
    assert len(ref["scores"]) > 10  # random weights with a zero class bias: many boxes
    assert len(raw.scores) == len(ref["scores"])
    np.testing.assert_allclose(raw.scores, ref["scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(raw.world_boxes, ref["box"], rtol=0, atol=1e-3)
    # our voxel boxes (from the resampled image's boxes) equal the bundle's world boxes
    # converted onto the study's grid
    ours = detections_to_boxes(raw, vol, min_score=0.0, max_boxes=300)
    theirs = [points_to_box(world_box_corners(b), vol, score=float(s))
              for b, s in sorted(zip(ref["box"], ref["scores"]), key=lambda t: -t[1])]
    assert [b.to_dict() for b in ours] == [b.to_dict() for b in theirs if b is not None]
    assert all(isinstance(b, Box3D) and b.fits(vol.shape) for b in ours)
    # the cut-off
    cut = detections_to_boxes(raw, vol, min_score=0.6, max_boxes=4)
    assert len(cut) <= 4 and all(b.score >= 0.6 for b in cut)
    assert [b.score for b in cut] == sorted((b.score for b in cut), reverse=True)
    assert t_ref < 60


def test_options_are_checked(tmp_path: Path, ckpt: Path) -> None:
    from autoprompt_seg.models.monai_retinanet.detector import RetinanetOptions

    for bad, msg in (({"min_score": 2}, "min_score"), ({"max_boxes": 0}, "max_boxes"),
                     ({"nope": 1}, "unknown key")):
        with pytest.raises(ConfigError, match=msg):
            RetinanetOptions.from_settings(_settings(tmp_path, ckpt, **bad))
    with pytest.raises(Exception, match="not installed"):
        from autoprompt_seg import registry

        registry.get("detector", "monai_retinanet").create(
            Settings(device="cpu", weights_dir=tmp_path / "empty"))


# --------------------------------------------------------------------------- CLI


def test_predict_with_an_installed_random_checkpoint(ckpt: Path, study_nifti: Path,
                                                     tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autoprompt_seg.cli import main

    wdir = tmp_path / "weights"
    r = CliRunner().invoke(main, ["weights", "add", str(ckpt), "--name", WEIGHTS_NAME,
                                  "--weights-dir", str(wdir)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["backends", "--json", "--weights-dir", str(wdir)])
    assert r.exit_code == 0, r.output
    rows = {(x["kind"], x["name"]): x for x in json.loads(r.output)}
    assert rows[("detector", "monai_retinanet")]["state"] == "ready"
    r = CliRunner().invoke(main, ["predict", str(study_nifti), "--detector", "monai_retinanet",
                                  "--segmenter", "classical", "--device", "cpu",
                                  "--weights-dir", str(wdir), "-o", str(tmp_path / "out"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])["report"]
    text = json.dumps(report)
    assert "monai_retinanet" in text
    assert "untrained test checkpoint" in text
    det = json.dumps(report).lower()
    assert "pinned release" not in det
