"""The Dask executor (a LocalCluster of 2 worker processes) against the local one: the same
per-case numbers and masks, resuming, cost measured on a worker, clean shutdown."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.bench.executor import DaskExecutor, LocalExecutor, make_executor
from autoprompt_seg.bench.runner import (
    CASES_FILE,
    COSTS_FILE,
    LESIONS_FILE,
    BenchConfig,
    read_rows,
    run_bench,
)
from autoprompt_seg.config import Settings
from autoprompt_seg.errors import ConfigError
from test_bench_runner import make_pairs

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskExecutor]:
    """One LocalCluster of 2 worker processes shared by several runs (each worker imports
    MONAI once, which is most of a worker's start-up time)."""
    with make_executor("dask", n_workers=2) as ex:
        assert isinstance(ex, DaskExecutor)
        yield ex


def _configs(root: Path) -> list[BenchConfig]:
    common = {"dataset": "pairs", "dataset_path": str(root), "segmenter": "classical",
              "measure_cost": False}
    return [BenchConfig(detector="oracle", jitter_shift=0.1, jitter_scale=0.1, seed=3,
                        **common),  # type: ignore[arg-type]
            BenchConfig(detector="candidates", **common)]  # type: ignore[arg-type]


def _by_key(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["config_hash"], r["case_id"]): r for r in read_rows(out / CASES_FILE)}


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9
    return a == b


TIMING = {"load_s", "detect_s", "segment_s", "metrics_s", "peak_rss_mb"}


def test_dask_matches_local_case_for_case(pairs_root: Path, tmp_path: Path,
                                          cluster: DaskExecutor) -> None:
    local, dask = tmp_path / "local", tmp_path / "dask"
    seen: list[str] = []
    for cfg in _configs(pairs_root):
        run_bench(cfg, local, settings=Settings())
        run_bench(cfg, dask, settings=Settings(), executor=cluster,
                  on_case=lambda i, n, r: seen.append(r["case_id"]))
    assert sorted(seen) == sorted(k[1] for k in _by_key(local))
    a, b = _by_key(local), _by_key(dask)
    assert sorted(a) == sorted(b) and len(a) == 10
    n_ok = 0
    for key, ra in a.items():
        rb = b[key]
        assert set(ra) == set(rb), key
        diff = {k: (ra[k], rb[k]) for k in ra if k not in TIMING and not _same(ra[k], rb[k])}
        assert not diff, (key, diff)
        if ra["status"] == "ok":
            n_ok += 1
            ma = np.load(local / "masks" / key[0] / f"{key[1]}.npz")["pred"]
            mb = np.load(dask / "masks" / key[0] / f"{key[1]}.npz")["pred"]
            assert np.array_equal(ma, mb)
            assert (dask / "overlays" / key[0] / f"{key[1]}.png").is_file()
    assert n_ok == 4
    la = sorted(map(str, read_rows(local / LESIONS_FILE)))
    lb = sorted(map(str, read_rows(dask / LESIONS_FILE)))
    assert la == lb
    assert len(cluster.client.scheduler_info()["workers"]) == 2


def test_resumed_dask_run_skips_done_cases_and_measures_cost_on_a_worker(
        pairs_root: Path, tmp_path: Path, cluster: DaskExecutor) -> None:
    out = tmp_path / "out"
    cfg = BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="oracle",
                      segmenter="classical", cases=("P01__a", "P02__a", "P05__empty"),
                      cost_repeats=1)
    stages: list[str] = []
    run_bench(cfg, out, settings=Settings(), executor=cluster, on_stage=stages.append)
    lines = (out / CASES_FILE).read_text().splitlines()
    assert len(lines) == 3
    (c,) = read_rows(out / COSTS_FILE)
    assert c["params"] == 0 and c["gflops"] is None and c["case_id"] == "P01__a"
    assert any("measuring cost on P01__a" in s and "dask" in s for s in stages)
    # a crash while writing the last case's row: keep two rows and half of the third
    (out / CASES_FILE).write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    kept = {r["case_id"] for r in read_rows(out / CASES_FILE)}
    seen: list[tuple[str, bool]] = []
    run_bench(cfg, out, settings=Settings(), executor=cluster,
              on_case=lambda i, n, r: seen.append((r["case_id"], bool(r.get("resumed")))))
    assert sorted(c for c, resumed in seen if resumed) == sorted(kept)
    redone = [c for c, resumed in seen if not resumed]
    assert len(redone) == 1 and redone[0] not in kept
    rows = read_rows(out / CASES_FILE)
    assert sorted(r["case_id"] for r in rows) == ["P01__a", "P02__a", "P05__empty"]
    assert len(read_rows(out / COSTS_FILE)) == 1  # not measured twice


def _boom(x: int) -> int:
    if x == 2:
        raise ValueError("boom on 2")
    return x


def test_a_task_error_reaches_the_driver(cluster: DaskExecutor) -> None:
    assert cluster.call(_boom, 1) == 1
    with pytest.raises(ValueError, match="boom on 2"):
        list(cluster.map_unordered(_boom, [(1,), (2,), (3,)]))
    assert sorted(cluster.map_unordered(_boom, [(3,), (1,)])) == [1, 3]  # still usable


def test_interrupted_dask_run_shuts_its_cluster_down_and_resumes(pairs_root: Path,
                                                                tmp_path: Path) -> None:
    """run_bench(executor="dask") starts its own LocalCluster; Ctrl-C in the driver (here
    from the progress callback) stops it with no worker process left, and the rows written
    so far count on resume. Bad cases only, so the workers need not import MONAI."""
    out = tmp_path / "out"
    cfg = BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="oracle",
                      segmenter="classical",
                      cases=("P03__nolabel", "P04__shifted", "P05__empty"))
    before = set(multiprocessing.active_children())

    def interrupt(i: int, n: int, row: dict) -> None:
        raise KeyboardInterrupt

    stages: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, out, settings=Settings(), executor="dask", on_case=interrupt,
                  on_stage=stages.append)
    assert any("LocalCluster (2 worker" in s for s in stages)
    assert set(multiprocessing.active_children()) - before == set()
    assert len(read_rows(out / CASES_FILE)) == 1
    seen: list[bool] = []
    run_bench(cfg, out, settings=Settings(), executor="dask", n_workers=1,
              on_case=lambda i, n, r: seen.append(bool(r.get("resumed"))))
    assert seen == [True, False, False]
    assert {r["status"] for r in read_rows(out / CASES_FILE)} == {"skipped"}
    assert not (out / COSTS_FILE).exists()  # no ok case: nothing to measure
    assert set(multiprocessing.active_children()) - before == set()


def test_gpu_resource_on_an_existing_cluster(pairs_root: Path, tmp_path: Path,
                                             cluster: DaskExecutor,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With a CUDA device (simulated), every task asks for the Dask resource GPU=1: a
    cluster whose workers advertise it runs the cases; one without it is refused."""
    import logging

    from distributed import LocalCluster

    from autoprompt_seg.bench import runner

    monkeypatch.setattr(runner, "wants_gpu", lambda settings: True)
    cfg = BenchConfig(dataset="pairs", dataset_path=str(pairs_root), detector="oracle",
                      segmenter="classical", cases=("P03__nolabel", "P05__empty"))
    address = cluster.client.scheduler.address
    with pytest.raises(ConfigError, match="GPU=1.*--resources"):
        run_bench(cfg, tmp_path / "no", settings=Settings(), executor="dask",
                  scheduler=address)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0", resources={"GPU": 1},
                      silence_logs=logging.WARNING) as gpu_cluster:
        stages: list[str] = []
        run_bench(cfg, tmp_path / "yes", settings=Settings(), executor="dask",
                  scheduler=gpu_cluster.scheduler_address, on_stage=stages.append)
        assert any("connecting to the Dask scheduler" in s for s in stages)
    assert [r["status"] for r in read_rows(tmp_path / "yes" / CASES_FILE)] == ["skipped"] * 2


def test_executor_choice_is_validated() -> None:
    with pytest.raises(ConfigError, match="executor.*'spark'"):
        make_executor("spark")
    with pytest.raises(ConfigError, match="scheduler tcp://x:1 needs --executor dask"):
        make_executor("local", "tcp://x:1")
    with pytest.raises(ConfigError, match="n_workers.*0"):
        make_executor("dask", n_workers=0)
    with LocalExecutor() as ex:
        assert list(ex.map_unordered(pow, [(2, 3), (3, 2)])) == [8, 9]
    assert DaskExecutor(gpu=True).resources == {"GPU": 1}
    assert DaskExecutor().resources is None
