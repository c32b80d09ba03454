"""Where the benchmark's cases run: in the process (``local``) or as Dask tasks (``dask``).

An executor runs a module-level function over a list of argument tuples and yields the
results as they complete (:meth:`Executor.map_unordered`), and runs a single call
(:meth:`Executor.call`). The runner (:mod:`.runner`) is the only writer of the output
folder: it appends each case's rows as its result arrives, so a run that stops (crash,
Ctrl-C, a lost cluster) resumes from the rows already written, with either executor.

``local``
    Sequential, in this process, in case order.
``dask``
    One task per case, on a ``distributed.LocalCluster`` started for the run (by default
    2 worker processes of 1 thread each: ``processes=True`` keeps the GIL-bound numpy /
    scipy work of two cases apart) or, with ``scheduler``, on an existing cluster
    (``distributed.Client(ADDRESS)``). Tasks are submitted with ``pure=False`` and their
    results collected with ``distributed.as_completed``. Each worker process builds the
    detector and segmenter once per configuration and keeps them (see
    :func:`autoprompt_seg.bench.runner.backends_for`); the functions and their arguments
    travel by cloudpickle, so the workers need this package installed and must be able to
    read the dataset paths.

**GPU as a Dask resource.** When ``gpu`` is true (the runner sets it when the resolved
device is ``cuda``), every task asks for ``resources={"GPU": 1}``. A LocalCluster's
workers each advertise ``GPU = torch.cuda.device_count()``; so with one worker thread
each, every worker runs one case at a time and all workers share the visible GPUs (each
worker loads its own copy of the model). Workers of an existing cluster must be started
with a GPU resource (``dask worker ADDRESS --nthreads 1 --resources "GPU=1"``); a cluster
whose workers advertise none is refused with a :class:`~autoprompt_seg.errors.ConfigError`
rather than left waiting forever.

**Shutdown.** Both executors are context managers. Leaving the ``with`` block, normally
or by an exception (``KeyboardInterrupt`` included), cancels the tasks not yet finished,
closes the client and, for a LocalCluster, shuts the cluster and its worker processes
down. On an existing cluster, the workers are asked to drop their cached backends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

from ..errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "dask")
#: Worker processes of the LocalCluster a ``dask`` run starts when no scheduler is given.
DEFAULT_DASK_WORKERS = 2
StageFn = Callable[[str], None]


class Executor(Protocol):
    """Runs benchmark tasks; a context manager (see the module docstring)."""

    name: str

    def __enter__(self) -> Executor: ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def map_unordered(self, fn: Callable[..., Any],
                      arg_tuples: Sequence[tuple[Any, ...]]) -> Iterator[Any]: ...

    def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class LocalExecutor:
    """Runs every call in this process, sequentially, in order."""

    name = "local"

    def __init__(self, on_exit: Callable[[], None] | None = None) -> None:
        self._on_exit = on_exit

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._on_exit is not None:
            self._on_exit()

    def map_unordered(self, fn: Callable[..., Any],
                      arg_tuples: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        for args in arg_tuples:
            yield fn(*args)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class DaskExecutor:
    """Runs calls as Dask tasks on a LocalCluster or an existing cluster."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, n_workers: int = DEFAULT_DASK_WORKERS,
                 gpu: bool = False, on_stage: StageFn | None = None,
                 on_exit: Callable[[], None] | None = None) -> None:
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler):
            raise ConfigError(f"--scheduler must be a Dask scheduler address like "
                              f"tcp://host:8786; got {scheduler!r}")
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigError(f"Argument 'n_workers' must be an integer >= 1; got "
                              f"{n_workers!r}")
        if importlib.util.find_spec("distributed") is None:
            raise UnavailableError("--executor dask needs the Python package distributed: "
                                   "pip install distributed")
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.gpu = gpu
        self._on_stage = on_stage
        self._on_exit = on_exit  # run on every worker of an existing cluster at exit
        self.cluster: Any = None
        self.client: Any = None

    @property
    def resources(self) -> dict[str, int] | None:
        """The resources each task asks for."""
        return {"GPU": 1} if self.gpu else None

    def __enter__(self) -> DaskExecutor:
        from distributed import Client, LocalCluster

        try:
            if self.scheduler is None:
                kw: dict[str, Any] = {}
                if self.gpu:
                    import torch

                    kw["resources"] = {"GPU": max(1, int(torch.cuda.device_count()))}
                self._stage(f"starting a Dask LocalCluster ({self.n_workers} worker "
                            f"process(es){', GPU resource' if self.gpu else ''})")
                self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1,
                                            processes=True, dashboard_address=":0",
                                            silence_logs=logging.WARNING, **kw)
                self.client = Client(self.cluster)
            else:
                self._stage(f"connecting to the Dask scheduler {self.scheduler}")
                try:
                    self.client = Client(self.scheduler, timeout="30s")
                except (OSError, TimeoutError) as e:
                    raise UnavailableError(f"--scheduler {self.scheduler}: cannot connect "
                                           f"({type(e).__name__}: {e})") from e
                self._check_gpu_workers()
        except BaseException:
            self._close()
            raise
        log.info("dask: %s", self.client)
        return self

    def _check_gpu_workers(self) -> None:
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            log.warning("dask scheduler %s has no worker yet; tasks wait for one",
                        self.scheduler)
            return
        if self.gpu and not any((w.get("resources") or {}).get("GPU", 0) >= 1
                                for w in workers.values()):
            raise ConfigError(f"--scheduler {self.scheduler}: the device is cuda, so each "
                              "case needs the Dask resource GPU=1, and no worker of this "
                              "cluster has it; start the workers with `dask worker "
                              f"{self.scheduler} --nthreads 1 --resources \"GPU=1\"`")

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()

    def _close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if client is not None and cluster is None and self._on_exit is not None:
                try:
                    client.run(self._on_exit)
                except Exception as e:  # noqa: BLE001 - best effort, the workers may be gone
                    log.warning("dask: could not release the workers' backends: %s", e)
        finally:
            try:
                if client is not None:
                    client.close()
            finally:
                if cluster is not None:
                    cluster.close()

    def _stage(self, msg: str) -> None:
        log.info(msg)
        if self._on_stage is not None:
            self._on_stage(msg)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.client is None:
            raise RuntimeError("DaskExecutor used outside its `with` block")
        return self.client.submit(fn, *args, pure=False, resources=self.resources)

    def map_unordered(self, fn: Callable[..., Any],
                      arg_tuples: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        from distributed import as_completed

        futures = [self._submit(fn, *args) for args in arg_tuples]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending and self.client is not None:
                self.client.cancel(pending)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._submit(fn, *args).result()


def make_executor(kind: str = "local", scheduler: str | None = None, *,
                  n_workers: int = DEFAULT_DASK_WORKERS, gpu: bool = False,
                  on_stage: StageFn | None = None,
                  on_exit: Callable[[], None] | None = None) -> LocalExecutor | DaskExecutor:
    """An executor by name (``local`` or ``dask``; see the module docstring).

    ``on_exit`` frees per-process state when the run ends: in this process for ``local``,
    on every worker of an existing Dask cluster for ``dask`` (a LocalCluster's workers
    simply exit).
    """
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}; got {kind!r}")
    if kind == "local":
        if scheduler is not None:
            raise ConfigError(f"--scheduler {scheduler} needs --executor dask")
        return LocalExecutor(on_exit)
    return DaskExecutor(scheduler, n_workers=n_workers, gpu=gpu, on_stage=on_stage,
                        on_exit=on_exit)


def default_worker_threads(n_workers: int) -> int:
    """Threads per worker process of a LocalCluster: the usable CPUs shared evenly."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, cpus // max(1, n_workers))
