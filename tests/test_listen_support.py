"""Helpers shared by the listener tests (no tests here): loopback ports, the node as a
subprocess, dcmtk's storescp as a destination, small synthetic studies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import tool

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def echo_ok(port: int, aet: str = "AUTOSEG", calling: str = "ECHOSCU") -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(HOST, port, ae_title=aet)
    if not assoc.is_established:
        return False
    st = assoc.send_c_echo()
    assoc.release()
    return bool(st) and st.Status == 0


def small_study(folder: Path, seed: int = 0, n_slices: int = 24, size: int = 128) -> Any:
    from autoprompt_seg.synthetic import synthetic_study

    return synthetic_study(folder, shape=(n_slices, size, size), spacing=(2.5, 2.0, 2.0),
                           n_tumours=1, seed=seed)


class Proc:
    """A subprocess with its output in a log file."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, cwd=cwd,
                                  env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._fh.close()
        return self.p.returncode


class NodeProc(Proc):
    """``python -m autoprompt_seg.cli.listen listen ...`` on loopback."""

    def __init__(self, spool: Path, port: int, *args: str, log: Path | None = None,
                 ready: bool = True) -> None:
        self.port = port
        self.spool = spool
        cmd = [sys.executable, "-m", "autoprompt_seg.cli.listen", "listen", "--host", HOST,
               "--port", str(port), "--spool", str(spool), "--min-free-mb", "1", *args]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        super().__init__(cmd, log or spool.parent / f"node-{port}.log", env=env)
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.p.poll() is not None:
                raise AssertionError(f"node exited with {self.p.returncode}:\n{self.log()}")
            return echo_ok(self.port)

        wait_until(up, timeout, "the node to answer C-ECHO", interval=0.3)


class StoreSCP(Proc):
    """dcmtk's storescp writing what it receives into ``out``."""

    def __init__(self, out: Path, port: int, aet: str = "DEST") -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.port = port
        super().__init__([tool("storescp"), "-aet", aet, "-od", str(out), str(port)],
                         out.parent / f"storescp-{port}.log")
        wait_until(lambda: echo_ok(port, aet), 20, "storescp to answer C-ECHO", 0.2)

    def segs(self) -> list[Any]:
        from pydicom import dcmread

        out = []
        for p in sorted(self.out.iterdir()):
            if p.name.startswith("SG"):
                out.append(dcmread(p))
        return out


def storescu(port: int, folder: Path, aet: str = "AUTOSEG", calling: str = "STORESCU",
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("storescu"), "-aet", calling, "-aec", aet, "+sd", "+r", HOST,
                           str(port), str(folder)], capture_output=True, text=True,
                          timeout=timeout)


def jobs(spool: Path) -> list[Any]:
    from autoprompt_seg.listen.queue import JobQueue

    q = JobQueue(spool / "queue.sqlite")
    try:
        return q.jobs()
    finally:
        q.close()


def seg_study_refs(seg: Any) -> tuple[str, set[str]]:
    """(StudyInstanceUID, referenced source SOP Instance UIDs) of a SEG."""
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence}
    return str(seg.StudyInstanceUID), refs
