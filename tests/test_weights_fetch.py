"""``weights fetch`` against a local HTTP server on 127.0.0.1 (no other network).

The server serves a generated checkpoint (the session's random MedSAM2-format file, or
small random bytes where the download must fail before the strict load) and can cut a
transfer, stall, answer 404, ignore Range, or act as an HTTPS proxy that refuses tunnels.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sam2")

from autoprompt_seg import weights as W  # noqa: E402
from autoprompt_seg.errors import UnavailableError  # noqa: E402

NAME = "MedSAM2_latest"


class Server:
    """A loopback HTTP server of one payload, with fault modes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.mode = "ok"  # ok | cut | stall | 404 | norange
        self.cut_at = len(payload) // 3
        self.cuts_left = 1
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_CONNECT(self) -> None:  # as a proxy: refuse every tunnel
                outer.requests.append({"method": "CONNECT", "path": self.path})
                self.send_error(403, "tunnels refused by the test proxy")

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append({"method": "GET", "path": self.path, "range": rng})
                if outer.mode == "404":
                    self.send_error(404, "Not Found")
                    return
                data, start = outer.payload, 0
                if rng and outer.mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                try:
                    if outer.mode == "cut" and outer.cuts_left > 0:
                        outer.cuts_left -= 1
                        self.wfile.write(body[:outer.cut_at])
                        self.wfile.flush()
                        return  # HTTP/1.0: the connection closes, short of Content-Length
                    if outer.mode == "stall":
                        self.wfile.write(body[:1000])
                        self.wfile.flush()
                        outer.release.wait(10)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/MedSAM2_latest.pt"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only: no proxy from the environment may intercept the test server."""
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def ckpt_bytes(medsam2_checkpoint: Path) -> bytes:
    return medsam2_checkpoint.read_bytes()


@pytest.fixture()
def small() -> Iterator[Server]:
    s = Server(os.urandom(300_000))
    yield s
    s.close()


def _manifest(url: str, **kw: Any) -> dict[str, W.WeightsEntry]:
    m = W.load_manifest()
    m[NAME] = replace(m[NAME], source=url, **kw)
    return m


def test_interrupted_then_resumed_installs_an_official_download(
        ckpt_bytes: bytes, tmp_path: Path) -> None:
    srv = Server(ckpt_bytes)
    try:
        srv.mode = "cut"
        m = _manifest(srv.url)
        seen: list[tuple[int, int | None]] = []
        with pytest.raises(UnavailableError) as ei:
            W.fetch(NAME, tmp_path, manifest=m, retries=0, timeout=5,
                    progress=lambda d, t: seen.append((d, t)))
        assert ei.value.exit_code == 69 and "again to resume" in str(ei.value)
        part = tmp_path / ".MedSAM2_latest.pt.part"
        assert part.stat().st_size == srv.cut_at  # kept for the resume
        assert not (tmp_path / "MedSAM2_latest.pt").exists()  # never the installed name
        assert seen[-1] == (srv.cut_at, len(ckpt_bytes))
        rec = W.fetch(NAME, tmp_path, manifest=m, retries=0, timeout=5,
                      progress=lambda d, t: seen.append((d, t)))
        assert srv.requests[-1]["range"] == f"bytes={srv.cut_at}-"  # resumed, not restarted
        assert seen[-1] == (len(ckpt_bytes), len(ckpt_bytes))
    finally:
        srv.close()
    dest = tmp_path / "MedSAM2_latest.pt"
    assert dest.read_bytes() == ckpt_bytes
    assert rec.sha256 == hashlib.sha256(ckpt_bytes).hexdigest()
    assert rec.origin == "fetch" and rec.source == srv.url and rec.state == W.OFFICIAL
    assert not part.exists() and not list(tmp_path.glob(".*.part*"))
    assert not list(tmp_path.glob(".adding-*"))
    prov = W.checkpoint_provenance(rec.sha256, "sam2.1_hiera_tiny_512", tmp_path)
    assert prov.state == W.OFFICIAL and prov.trusted
    assert f"{NAME}, downloaded from its official source on " in prov.text
    assert "not independently pinned" in prov.text and rec.sha256 in prov.text
    # the download's hash is re-checked at every load: other bytes are an unknown file
    assert W.checkpoint_provenance("ab" * 32, "sam2.1_hiera_tiny_512", tmp_path).state \
        == W.UNKNOWN
    assert {r.name: r.state for r in W.list_weights(tmp_path)}[NAME] == W.OFFICIAL


def test_interruption_is_resumed_within_one_call(ckpt_bytes: bytes, tmp_path: Path) -> None:
    srv = Server(ckpt_bytes)
    try:
        srv.mode = "cut"
        rec = W.fetch(NAME, tmp_path, manifest=_manifest(srv.url, sha256=hashlib.sha256(
            ckpt_bytes).hexdigest(), size=len(ckpt_bytes)), retries=2, timeout=5)
        assert [r["range"] for r in srv.requests] == [None, f"bytes={srv.cut_at}-"]
    finally:
        srv.close()
    assert rec.state == W.PINNED and rec.known  # the manifest's pin matched


def test_size_mismatch_is_refused(small: Server, tmp_path: Path) -> None:
    m = _manifest(small.url, size=len(small.payload) + 10)
    with pytest.raises(UnavailableError, match="manifest says") as ei:
        W.fetch(NAME, tmp_path, manifest=m, timeout=5)
    assert ei.value.exit_code == 69
    assert not (tmp_path / "MedSAM2_latest.pt").exists()
    assert not (tmp_path / ".MedSAM2_latest.pt.part").exists()


def test_hash_mismatch_is_refused_and_deleted(small: Server, tmp_path: Path) -> None:
    m = _manifest(small.url, sha256="0" * 64, size=len(small.payload))
    with pytest.raises(UnavailableError, match="manifest pins") as ei:
        W.fetch(NAME, tmp_path, manifest=m, timeout=5)
    assert ei.value.exit_code == 69
    assert hashlib.sha256(small.payload).hexdigest() in str(ei.value)
    assert not (tmp_path / "MedSAM2_latest.pt").exists()
    assert not (tmp_path / ".MedSAM2_latest.pt.part").exists()
    assert not (tmp_path / W.INSTALLED_JSON).exists()


def test_404_fails_with_69_and_the_manual_alternative(small: Server, tmp_path: Path) -> None:
    small.mode = "404"
    with pytest.raises(UnavailableError) as ei:
        W.fetch(NAME, tmp_path, manifest=_manifest(small.url), timeout=5)
    assert ei.value.exit_code == 69
    assert "HTTP 404" in str(ei.value) and "autoseg weights add" in str(ei.value)
    assert len(small.requests) == 1  # not retried
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*.part"))


def test_stalled_server_times_out_and_resumes(small: Server, tmp_path: Path) -> None:
    small.mode = "stall"
    t0 = time.perf_counter()
    with pytest.raises(UnavailableError, match="interrupted") as ei:
        W.fetch(NAME, tmp_path, manifest=_manifest(small.url), timeout=0.3, retries=1)
    assert time.perf_counter() - t0 < 5
    assert ei.value.exit_code == 69
    assert [r["range"] for r in small.requests] == [None, "bytes=1000-"]
    assert (tmp_path / ".MedSAM2_latest.pt.part").stat().st_size == 2000


def test_server_ignoring_range_restarts_cleanly(small: Server, tmp_path: Path) -> None:
    small.mode = "cut"
    m = _manifest(small.url, size=len(small.payload))
    with pytest.raises(UnavailableError):
        W.fetch(NAME, tmp_path, manifest=m, retries=0, timeout=5)
    small.mode = "norange"
    with pytest.raises(Exception) as ei:  # the bytes arrive whole, then fail the strict load
        W.fetch(NAME, tmp_path, manifest=m, retries=0, timeout=5)
    assert "truncated or corrupt" in str(ei.value)
    assert small.requests[-1]["range"] == f"bytes={small.cut_at}-"
    assert not (tmp_path / ".MedSAM2_latest.pt.part").exists()


def test_https_proxy_from_the_environment_is_used(small: Server, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY is honoured: the download asks the (local) proxy for a tunnel to the
    manifest's host; the proxy refuses, so nothing leaves this machine."""
    proxy = f"http://127.0.0.1:{small.httpd.server_address[1]}"
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("https_proxy", proxy)
    m = _manifest("https://weights.example.invalid/MedSAM2_latest.pt")
    with pytest.raises(UnavailableError) as ei:
        W.fetch(NAME, tmp_path, manifest=m, timeout=5)
    assert ei.value.exit_code == 69
    assert small.requests == [{"method": "CONNECT", "path": "weights.example.invalid:443"}]


def test_cli_fetch_progress_and_exit_codes(small: Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from autoprompt_seg.cli.weights import weights

    m = _manifest(small.url)
    monkeypatch.setattr(W, "load_manifest", lambda: m)
    small.mode = "404"
    r = CliRunner().invoke(weights, ["fetch", NAME, "--weights-dir", str(tmp_path),
                                     "--timeout", "5"])
    assert r.exit_code == 69 and "HTTP 404" in r.output, r.output
    r = CliRunner().invoke(weights, ["fetch", "--help"])
    assert "HTTPS_PROXY" in r.output and "Range" in r.output
    small.mode = "ok"  # random bytes: downloaded (progress shown), then refused by the check
    r = CliRunner().invoke(weights, ["fetch", NAME, "--weights-dir", str(tmp_path)])
    assert r.exit_code == 69 and "truncated or corrupt" in r.output, r.output
    assert not list(tmp_path.glob(".MedSAM2_latest.pt.part*"))  # refused: nothing kept
