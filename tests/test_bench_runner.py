"""End-to-end bench runs on small synthetic datasets: results, bad cases, resume, CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autoprompt_seg import datasets as ds
from autoprompt_seg.bench.metrics import case_metrics
from autoprompt_seg.bench.runner import CASES_FILE, BenchConfig, read_rows, run_bench
from autoprompt_seg.config import Settings
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.synthetic import synthetic_chest
from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Volume

SHAPE = (24, 96, 96)
SPACING = (2.5, 1.5, 1.5)


def _write(vol: Volume, arr: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    from autoprompt_seg.io.image import volume_to_sitk

    sitk.WriteImage(volume_to_sitk(vol, arr), str(path))


def make_pairs(root: Path) -> Path:
    """images/ + labels/: two good cases, plus a missing label, a geometry mismatch and an
    empty label."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, name in enumerate(["P01__a", "P02__a", "P03__nolabel", "P04__shifted",
                              "P05__empty"]):
        chest = synthetic_chest(SHAPE, SPACING, n_tumours=1, seed=i,
                                tumour_radius_mm=(9.0,))
        vol = Volume(array=chest.hu, spacing=SPACING, origin=(0.0, 0.0, 0.0),
                     direction=np.eye(3), source_format="synthetic")
        _write(vol, chest.hu, root / "images" / f"{name}_0000.nii.gz")
        labels = (chest.labels > 0).astype(np.uint8)
        if name.endswith("nolabel"):
            continue
        if name.endswith("empty"):
            labels[:] = 0
        lab_vol = vol
        if name.endswith("shifted"):
            lab_vol = Volume(array=chest.hu, spacing=SPACING, origin=(5.0, 0.0, 0.0),
                             direction=np.eye(3), source_format="synthetic")
        _write(lab_vol, labels, root / "labels" / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def _cfg(root: Path, **kw: object) -> BenchConfig:
    return BenchConfig(dataset="pairs", dataset_path=str(root), detector="oracle",
                       segmenter="classical", **kw)  # type: ignore[arg-type]


def test_end_to_end_reports_bad_cases_and_matches_saved_masks(pairs_root: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_bench(_cfg(pairs_root, jitter_shift=0.1, jitter_scale=0.1), out,
                        settings=Settings())
    rows = {r["case_id"]: r for r in read_rows(out / CASES_FILE)}
    assert sorted(rows) == ["P01__a", "P02__a", "P03__nolabel", "P04__shifted", "P05__empty"]
    assert rows["P03__nolabel"]["status"] == "skipped"
    assert "missing" in rows["P03__nolabel"]["error"]
    assert rows["P04__shifted"]["status"] == "skipped"
    assert "origin" in rows["P04__shifted"]["error"]
    assert rows["P05__empty"]["status"] == "skipped"
    assert "empty" in rows["P05__empty"]["error"]
    for cid in ("P01__a", "P02__a"):
        r = rows[cid]
        assert r["status"] == "ok" and r["mode"] == "manual:key-slice"
        assert r["dice"] > 0.6, r
        assert r["sensitivity"] == 1.0
        assert r["peak_rss_mb"] > 0 and r["segment_s"] >= 0
        # the metrics recomputed from the saved mask match the row
        saved = np.load(out / "masks" / r["config_hash"] / f"{cid}.npz")
        case = next(c for c in ds.pairs_cases(pairs_root) if c.case_id == cid)
        _, gt = ds.load_case(case)
        again, _ = case_metrics(saved["pred"], gt, tuple(saved["spacing"]))
        assert again["dice"] == pytest.approx(r["dice"], abs=1e-9)
        assert again["hd95_mm"] == pytest.approx(r["hd95_mm"], abs=1e-9)
        png = out / "overlays" / r["config_hash"] / f"{cid}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.stem for p in (out / "overlays").glob("*/*.png")) == ["P01__a", "P02__a"]
    g = summary["groups"][0]
    assert (g["n_ok"], g["n_skipped"], g["n_failed"]) == (2, 3, 0)
    for f in ("cases.csv", "lesions.csv", "summary.json", "summary.md", "report.html"):
        assert (out / f).is_file()
    assert "classical+oracle" in (out / "summary.md").read_text()


def test_resume_skips_done_cases_and_finishes_an_interrupted_run(pairs_root: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _cfg(pairs_root, cases=("P01__a", "P02__a"))
    run_bench(cfg, out, settings=Settings())
    lines = (out / CASES_FILE).read_text().splitlines()
    assert len(lines) == 2
    seen: list[tuple[str, bool]] = []
    run_bench(cfg, out, settings=Settings(),
              on_case=lambda i, n, r: seen.append((r["case_id"], bool(r.get("resumed")))))
    assert seen == [("P01__a", True), ("P02__a", True)]
    assert len((out / CASES_FILE).read_text().splitlines()) == 2
    # simulate a crash during the second case: its row and a half-written line
    (out / CASES_FILE).write_text(lines[0] + "\n" + lines[1][:20])
    seen.clear()
    run_bench(cfg, out, settings=Settings(),
              on_case=lambda i, n, r: seen.append((r["case_id"], bool(r.get("resumed")))))
    assert seen == [("P01__a", True), ("P02__a", False)]
    ok = [r for r in read_rows(out / CASES_FILE) if r.get("status") == "ok"]
    assert sorted(r["case_id"] for r in ok) == ["P01__a", "P02__a"]
    # another configuration in the same folder is a separate group, not "done"
    run_bench(_cfg(pairs_root, cases=("P01__a",), jitter_shift=0.2), out, settings=Settings())
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["groups"]) == 2


def test_multi_box_protocol_is_refused_naming_the_backend(pairs_root: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="every-slice.*'classical'"):
        run_bench(_cfg(pairs_root, protocol="every-slice"), tmp_path / "o", settings=Settings())


def test_config_validation_names_argument_and_value() -> None:
    with pytest.raises(ConfigError, match="dataset.*'bogus'"):
        BenchConfig(dataset="bogus")
    with pytest.raises(ConfigError, match="segmenter 'nope'"):
        BenchConfig(segmenter="nope")
    with pytest.raises(ConfigError, match="jitter_scale.*2"):
        BenchConfig(detector="oracle", jitter_scale=2.0)
    a = BenchConfig(detector="candidates")
    assert a.config_hash() == BenchConfig(detector="candidates", jitter_shift=0.3).config_hash()
    assert BenchConfig(detector="oracle").config_hash() != \
        BenchConfig(detector="oracle", jitter_shift=0.3).config_hash()


def test_patient_level_splits_are_seeded_and_saved(pairs_root: Path, tmp_path: Path) -> None:
    cases = ds.pairs_cases(pairs_root)
    extra = [ds.Case("P01__b", "P01", cases[0].load_volume, cases[0].load_label)]
    s1 = ds.make_splits(cases + extra, seed=3, fractions=(0.6, 0.2, 0.2))
    s2 = ds.make_splits(cases + extra, seed=3, fractions=(0.6, 0.2, 0.2))
    assert s1 == s2
    where = {cid: n for n, ids in s1["cases"].items() for cid in ids}
    assert where["P01__a"] == where["P01__b"]
    assert sum(len(v) for v in s1["patients"].values()) == 5
    p = ds.save_splits(s1, tmp_path / "splits.json")
    assert ds.load_splits(p) == s1
    with pytest.raises(ConfigError, match="fractions"):
        ds.make_splits(cases, fractions=(0.5, 0.2))


def test_msd_layout_reads_dataset_json(pairs_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "Task06_Lung"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    src_img = pairs_root / "images" / "P01__a_0000.nii.gz"
    (root / "imagesTr" / "lung_001.nii.gz").write_bytes(src_img.read_bytes())
    (root / "labelsTr" / "lung_001.nii.gz").write_bytes(
        (pairs_root / "labels" / "P01__a.nii.gz").read_bytes())
    (root / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}))
    cases = ds.get_cases("msd", root)
    assert [c.case_id for c in cases] == ["lung_001"]
    vol, gt = ds.load_case(cases[0])
    assert gt.shape == vol.shape and gt.any()


def test_cli_run_and_report(pairs_root: Path, tmp_path: Path) -> None:
    from autoprompt_seg.cli.bench import bench

    out = tmp_path / "cli"
    res = CliRunner().invoke(bench, ["run", "--dataset", "pairs", "--dataset-path",
                                     str(pairs_root), "--detector", "oracle", "--case",
                                     "P01__a", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "classical+oracle" in res.output and "Dice" in res.output
    res = CliRunner().invoke(bench, ["report", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["groups"][0]["n_ok"] == 1
    res = CliRunner().invoke(bench, ["run", "--detector", "oracle", "--prompt-protocol",
                                     "every-k", "--dataset", "pairs", "--dataset-path",
                                     str(pairs_root), "--out", str(out)])
    assert res.exit_code == 78, res.output
    assert "classical" in res.output


def test_a_backend_failure_is_recorded_not_raised(pairs_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprompt_seg.pipeline as pipeline
    from autoprompt_seg.errors import BackendError

    real = pipeline.run
    calls = {"n": 0}

    def flaky(volume, detector, segmenter, stage_progress=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise BackendError("segmenter 'classical' failed: boom")
        return real(volume, detector, segmenter, stage_progress)

    monkeypatch.setattr(pipeline, "run", flaky)
    out = tmp_path / "out"
    summary = run_bench(_cfg(pairs_root, cases=("P01__a", "P02__a")), out, settings=Settings())
    rows = {r["case_id"]: r for r in read_rows(out / CASES_FILE)}
    assert rows["P01__a"]["status"] == "failed" and "boom" in rows["P01__a"]["error"]
    assert rows["P02__a"]["status"] == "ok"
    assert summary["groups"][0]["n_failed"] == 1


def test_nsclc_layout_on_the_real_pycerr_studies(pycerr_root: Path) -> None:
    """pycerr's folder is the NSCLC-Radiomics layout: one folder per patient, CT + RTSTRUCT."""
    cases = ds.get_cases("nsclc", pycerr_root)
    assert [c.case_id for c in cases] == ["pat_1", "pat_2", "pat_3", "pat_4"]
    vol, gt = ds.load_case(cases[3])
    assert gt.shape == vol.shape and gt.sum() > 100
    bad = [c for c in ds.get_cases("nsclc", pycerr_root, roi="NO-SUCH-ROI")][:1]
    with pytest.raises(Exception, match="pat_1.*NO-SUCH-ROI"):
        ds.load_case(bad[0])


def test_cli_splits_then_run_one_split(pairs_root: Path, tmp_path: Path) -> None:
    from autoprompt_seg.cli.bench import bench

    sp = tmp_path / "splits.json"
    res = CliRunner().invoke(bench, ["splits", "--dataset", "pairs", "--dataset-path",
                                     str(pairs_root), "--fractions", "0.6,0.2,0.2",
                                     "--seed", "1", "--out", str(sp)])
    assert res.exit_code == 0, res.output
    test_cases = json.loads(sp.read_text())["cases"]["test"]
    assert len(test_cases) == 1
    out = tmp_path / "o"
    res = CliRunner().invoke(bench, ["run", "--dataset", "pairs", "--dataset-path",
                                     str(pairs_root), "--detector", "oracle", "--splits",
                                     str(sp), "--split", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["case_id"] for r in read_rows(out / CASES_FILE)] == test_cases
    res = CliRunner().invoke(bench, ["run", "--dataset", "pairs", "--dataset-path",
                                     str(pairs_root), "--splits", str(sp), "--out", str(out)])
    assert res.exit_code == 78 and "--split" in res.output


def test_dicom_seg_ground_truth_in_the_nsclc_layout(tmp_path: Path) -> None:
    """A patient folder with a CT series and a DICOM-SEG (no RTSTRUCT): the SEG is the label,
    the segment named like the ROI if there is one, voxel for voxel."""
    from autoprompt_seg.export.dicom_seg import build_seg
    from autoprompt_seg.io.dicom import load_study
    from autoprompt_seg.synthetic import synthetic_study
    from autoprompt_seg.types import BackendInfo, Box3D, LesionMask, Prediction

    study = synthetic_study(tmp_path / "root" / "P001", shape=(16, 64, 64), n_tumours=2, seed=2,
                            tumour_radius_mm=(8.0, 6.0), shuffle_names=True, suffix="")
    vol, _ = load_study(study.study_dir)
    truth = study.chest.labels
    lesions = []
    for t in (1, 2):
        nz = np.argwhere(truth == t)
        lo, hi = nz.min(0), nz.max(0) + 1
        box = Box3D(int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]),
                    key_slice=int(lo[0]))
        lesions.append(LesionMask.from_full(truth == t, box))
    pred = Prediction(volume=vol, lesions=tuple(lesions),
                      detector=BackendInfo(name="gt", kind="detector", version="t"),
                      segmenter=BackendInfo(name="gt", kind="segmenter", version="t"))
    build_seg(pred).save_as(study.study_dir / "gt_seg.dcm")

    (case,) = ds.get_cases("nsclc", tmp_path / "root")
    volume, mask = ds.load_case(case)
    assert np.array_equal(mask, truth > 0)
    (case2,) = ds.get_cases("nsclc", tmp_path / "root", roi="Lung tumour 2")
    _, mask2 = ds.load_case(case2)
    assert np.array_equal(mask2, truth == 2)


# --------------------------------------------------------------- training fields, modes


def test_paradigm_fields_are_validated_hashed_and_written(pairs_root: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="paradigm.*'one-shot'"):
        BenchConfig(paradigm="one-shot")
    with pytest.raises(ConfigError, match="shots must be >= 1.*0"):
        BenchConfig(paradigm="few-shot", train_hash="abc")
    with pytest.raises(ConfigError, match="shots applies to.*few-shot only"):
        BenchConfig(shots=3)
    with pytest.raises(ConfigError, match="fine-tune needs train_hash"):
        BenchConfig(paradigm="fine-tune")
    with pytest.raises(ConfigError, match="cost-repeats.*0"):
        BenchConfig(cost_repeats=0)
    base = BenchConfig()
    assert base.config_hash() == BenchConfig(measure_cost=False, cost_repeats=7).config_hash()
    few = BenchConfig(paradigm="few-shot", shots=3, train_hash="abc", train_cases=3)
    assert len({base.config_hash(), few.config_hash(),
                BenchConfig(paradigm="few-shot", shots=5, train_hash="abc").config_hash(),
                BenchConfig(paradigm="fine-tune", train_hash="abc").config_hash(),
                BenchConfig(paradigm="fine-tune", train_hash="abd").config_hash()}) == 5

    out = tmp_path / "out"
    run_bench(_cfg(pairs_root, cases=("P01__a",), paradigm="few-shot", shots=2,
                   train_hash="f00", train_cases=2, measure_cost=False), out,
              settings=Settings())
    run_bench(_cfg(pairs_root, cases=("P01__a",), measure_cost=False), out,
              settings=Settings())
    rows = read_rows(out / CASES_FILE)
    assert [(r["paradigm"], r["shots"], r["train_cases"], r["train_hash"]) for r in rows] == \
        [("few-shot", 2, 2, "f00"), ("zero-shot", None, None, None)]
    assert rows[0]["method"] == "classical+oracle"
    assert not (out / "costs.jsonl").exists()


def test_training_fields_read_the_training_record(tmp_path: Path) -> None:
    from autoprompt_seg.bench.runner import training_fields
    from autoprompt_seg.weights import TRAINING_RECORD_SUFFIX, sha256_path

    ck = tmp_path / "model.pt"
    ck.write_bytes(b"weights")
    with pytest.raises(ConfigError, match="model.pt.*no valid training record"):
        training_fields(ck)
    sha = sha256_path(ck)
    (tmp_path / ("model.pt" + TRAINING_RECORD_SUFFIX)).write_text(
        json.dumps({"sha256": sha, "n_cases": 4}))
    assert training_fields(ck) == {"train_hash": sha[:12], "train_cases": 4}


class _BoxSlices:
    """A SliceSegmenter: each given 2-D box is segmented as the filled box (so the
    prediction shows exactly which slices got a box); records what it was given."""

    calls: list[list[list[Box3D]]] = []

    def info(self) -> BackendInfo:
        return BackendInfo(name="boxslices", kind="segmenter", version="test")

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: object = None) -> list[LesionMask]:
        raise AssertionError("segment() must not be called for multi-box protocols")

    def segment_slices(self, volume: Volume, lesion_slice_boxes: Sequence[Sequence[Box3D]],
                       progress: object = None) -> list[LesionMask]:
        _BoxSlices.calls.append([list(b) for b in lesion_slice_boxes])
        out = []
        for boxes in lesion_slice_boxes:
            full = np.zeros(volume.shape, bool)
            for b in boxes:
                full[b.slices()] = True
            out.append(LesionMask.from_full(full, boxes[0]))
        return out


class _Everything:
    """A prompt-free segmenter: everything above -300 HU."""

    promptable = False

    def info(self) -> BackendInfo:
        return BackendInfo(name="everything", kind="segmenter", version="test")

    def segment(self, volume: Volume, boxes: Sequence[Box3D],
                progress: object = None) -> list[LesionMask]:
        return [LesionMask.from_full(volume.array > -300, b) for b in boxes]


def _make_box_slices(settings: Settings) -> _BoxSlices:
    return _BoxSlices()


def _make_everything(settings: Settings) -> _Everything:
    return _Everything()


@pytest.fixture()
def fake_segmenters(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprompt_seg import registry

    specs = (registry.BackendSpec(name="boxslices", kind="segmenter", summary="test",
                                  factory=f"{__name__}:_make_box_slices"),
             registry.BackendSpec(name="everything", kind="segmenter", summary="test",
                                  factory=f"{__name__}:_make_everything"))
    monkeypatch.setattr(registry, "BACKENDS", registry.BACKENDS + specs)
    _BoxSlices.calls = []


@pytest.mark.parametrize("protocol,k", [("every-slice", 1), ("every-k", 2), ("every-k", 3)])
def test_multi_box_protocols_go_to_segment_slices(pairs_root: Path, tmp_path: Path,
                                                  fake_segmenters: None, protocol: str,
                                                  k: int) -> None:
    out = tmp_path / "out"
    run_bench(BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="oracle",
                          segmenter="boxslices", protocol=protocol, k=k, cases=("P01__a",),
                          measure_cost=False), out, settings=Settings())
    (row,) = read_rows(out / CASES_FILE)
    assert row["status"] == "ok" and row["mode"] == f"manual:{protocol}", row
    case = ds.pairs_cases(pairs_root)[0]
    _, gt = ds.load_case(case)
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    (lesions,) = _BoxSlices.calls  # one case, one call, one lesion
    (boxes,) = lesions
    got = [b.z0 for b in boxes]
    key = int(np.argmax(gt.sum(axis=(1, 2))))
    drawn = [z for z in zs if (z - key) % k == 0]
    assert got == list(range(drawn[0], drawn[-1] + 1))  # every slice between drawn ones
    assert row["n_prompt_boxes"] == len(drawn) and row["n_slice_boxes"] == len(got)
    # the mask is the union of those boxes: it covers the GT on every drawn slice, is
    # present on the interpolated ones and absent elsewhere
    saved = np.load(out / "masks" / row["config_hash"] / "P01__a.npz")["pred"]
    for z in drawn:
        assert saved[z][gt[z]].all()
    assert [z for z in range(saved.shape[0]) if saved[z].any()] == got
    if k == 1:
        assert row["sensitivity"] == 1.0 and row["dice"] > 0.7


def test_unprompted_mode_for_detector_none(pairs_root: Path, tmp_path: Path,
                                           fake_segmenters: None) -> None:
    cfg = BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="none",
                      segmenter="everything", cases=("P01__a",), measure_cost=False)
    assert cfg.mode == "unprompted" and cfg.method == "everything+none"
    assert cfg.config_hash() == BenchConfig(dataset="pairs", dataset_path=str(pairs_root),
                                            detector="none", segmenter="everything",
                                            protocol="every-k").config_hash()
    out = tmp_path / "out"
    run_bench(cfg, out, settings=Settings())
    (row,) = read_rows(out / CASES_FILE)
    assert row["status"] == "ok" and row["mode"] == "unprompted" and row["n_masks"] >= 1
    with pytest.raises(ConfigError, match="detector none.*'classical'"):
        run_bench(BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="none",
                              segmenter="classical"), tmp_path / "o2", settings=Settings())


def test_cost_is_measured_once_per_configuration(pairs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stages: list[str] = []
    cfg = _cfg(pairs_root, cases=("P03__nolabel", "P01__a", "P02__a"), cost_repeats=2)
    run_bench(cfg, out, settings=Settings(), on_stage=stages.append)
    (cost,) = read_rows(out / "costs.jsonl")
    assert cost["config_hash"] == cfg.config_hash() and cost["case_id"] == "P01__a"
    assert cost["params"] == 0 and cost["gflops"] is None and cost["cuda_peak_mb"] is None
    assert len(cost["latency_runs"]) == 2 and cost["latency_warm_s"] > 0
    assert cost["latency_warm_s"] == pytest.approx(float(np.median(cost["latency_runs"])))
    assert "thread" in cost["device"] and cost["peak_rss_mb"] > 0
    assert (cost["method"], cost["mode"], cost["paradigm"], cost["shots"]) == \
        ("classical+oracle", "manual:key-slice", "zero-shot", None)
    assert any("measuring cost on P01__a" in s for s in stages)
    run_bench(cfg, out, settings=Settings())  # resumed: nothing to do, no second row
    assert len(read_rows(out / "costs.jsonl")) == 1
