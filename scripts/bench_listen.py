"""Receive throughput of `autoseg listen` (instances/s into the spool, fsync on) against
dcmtk's `storescp` (no fsync) on the same machine, in the same run, with the same senders.

    python scripts/bench_listen.py [--instances 200] [--size 512] [--repeats 3]

Each receiver gets the same synthetic CT series (SIZE x SIZE, 16-bit) from two senders:
dcmtk's `storescu` (one association, one instance at a time) and a pynetdicom SCU (one
association). The node runs receive-only (`--workers 0`). Prints a table; the target
is node >= 0.5x storescp.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo(port: int, aet: str) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context("1.2.840.10008.1.1")
    a = ae.associate("127.0.0.1", port, ae_title=aet)
    if not a.is_established:
        return False
    a.release()
    return True


def _wait(port: int, aet: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _echo(port, aet):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"receiver on port {port} did not come up")
        time.sleep(0.3)


def send_storescu(port: int, aet: str, folder: Path) -> None:
    r = subprocess.run(["storescu", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port),
                        str(folder)], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise SystemExit(f"storescu failed: {r.stderr[-2000:]}")


def send_pynetdicom(port: int, aet: str, folder: Path) -> None:
    from pydicom import dcmread
    from pynetdicom import AE

    files = sorted(folder.glob("*.dcm"))
    dsets = [dcmread(p) for p in files]  # read before timing would be fairer: see caller
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(dsets[0].SOPClassUID, dsets[0].file_meta.TransferSyntaxUID)
    a = ae.associate("127.0.0.1", port, ae_title=aet, max_pdu=0)
    if not a.is_established:
        raise SystemExit("pynetdicom SCU: no association")
    for ds in dsets:
        st = a.send_c_store(ds)
        if not st or st.Status != 0:
            raise SystemExit(f"pynetdicom SCU: status {st}")
    a.release()


def run_receiver(kind: str, work: Path, send: Callable[[int, str, Path], None],
                 src: Path) -> float:
    """Seconds to receive every file of ``src`` (from the first byte to the last answer)."""
    port = _port()
    out = work / f"{kind}-{port}"
    out.mkdir()
    if kind == "storescp":
        aet = "STORESCP"
        cmd = ["storescp", "-aet", aet, "-od", str(out), str(port)]
    else:
        aet = "AUTOSEG"
        cmd = [sys.executable, "-m", "autoprompt_seg.cli.listen", "listen", "--host",
               "127.0.0.1", "--port", str(port), "--spool", str(out), "--workers", "0",
               "--quiet-period", "3600", "--min-free-mb", "1", "--quiet-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(port, aet, proc)
        t0 = time.perf_counter()
        send(port, aet, src)
        dt = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    n = len(list(out.rglob("*.dcm"))) if kind == "node" else len(
        [p for p in out.iterdir() if p.name.startswith("CT")])
    expected = len(list(src.glob("*.dcm")))
    if n != expected:
        raise SystemExit(f"{kind}: {n} of {expected} instances on disk")
    shutil.rmtree(out, ignore_errors=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="Folder on the disk to measure "
                    "(default: a temporary folder).")
    args = ap.parse_args()
    if shutil.which("storescp") is None or shutil.which("storescu") is None:
        raise SystemExit("dcmtk (storescp, storescu) is not installed: apt-get install dcmtk")
    import numpy as np

    from autoprompt_seg.synthetic import write_series

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        src = work / "src"
        rng = np.random.default_rng(0)
        hu = rng.normal(-500, 200, (args.instances, args.size, args.size)).astype(np.float32)
        write_series(src, hu, (2.5, 0.8, 0.8))
        mb = sum(p.stat().st_size for p in src.glob("*.dcm")) / 2**20
        senders = {"storescu": send_storescu, "pynetdicom": send_pynetdicom}
        rows = []
        for sname, send in senders.items():
            times: dict[str, list[float]] = {"storescp": [], "node": []}
            for _ in range(args.repeats):
                for kind in ("storescp", "node"):  # alternate: same conditions for both
                    times[kind].append(run_receiver(kind, work, send, src))
            scp = args.instances / statistics.median(times["storescp"])
            node = args.instances / statistics.median(times["node"])
            rows.append((sname, scp, node))
        print(f"\n{args.instances} instances of {args.size}x{args.size} CT "
              f"({mb:.0f} MiB), median of {args.repeats} run(s), loopback, this machine")
        print("| sender     | storescp (no fsync) inst/s | autoseg listen (fsync) inst/s "
              "| ratio | target >= 0.5 |")
        print("|------------|---------------------------:|------------------------------:"
              "|------:|---------------|")
        for sname, scp, node in rows:
            print(f"| {sname:<10} | {scp:26.1f} | {node:29.1f} | {node / scp:5.2f} | "
                  f"{'met' if node / scp >= 0.5 else 'MISSED':<13} |")


if __name__ == "__main__":
    main()
