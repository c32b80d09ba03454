"""The SCP on loopback (in-process node, receive only): echo, and bad senders and bad data,
each answered with a proper status or refusal while the node keeps serving."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from autoprompt_seg.listen.config import build_config
from autoprompt_seg.listen.node import Node
from conftest import tool
from test_listen_support import HOST, echo_ok, wait_until

pytestmark = pytest.mark.network
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import numpy as np

    from autoprompt_seg.synthetic import write_series

    d = tmp_path_factory.mktemp("study") / "s"
    uid = generate_uid()
    paths = write_series(d, np.zeros((6, 32, 32), np.float32), (2.5, 1.0, 1.0), study_uid=uid)
    return SimpleNamespace(paths=paths, study_uid=uid)


def _node(tmp_path: Path, **kw: Any) -> Node:
    cfg = build_config({"spool": str(tmp_path / "spool"), "host": HOST, "port": 0,
                        "workers": 0, "quiet_period": 0.2, "min_free_mb": 1, **kw})
    node = Node(cfg)
    node.start()
    return node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = _node(tmp_path, allow=["GOOD", "ECHOSCU", "STORESCU"])
    yield n
    n.stop()


def _assoc(port: int, calling: str = "GOOD", classes: tuple[str, ...] = (CT,)) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    for c in classes:
        ae.add_requested_context(c, ExplicitVRLittleEndian)
    return ae.associate(HOST, port, ae_title="AUTOSEG")


def _store(port: int, ds: Any, calling: str = "GOOD") -> int:
    assoc = _assoc(port, calling)
    assert assoc.is_established
    st = assoc.send_c_store(ds)
    assoc.release()
    return int(st.Status)


def test_echoscu_success(node: Node) -> None:
    r = subprocess.run([tool("echoscu"), "-aec", "AUTOSEG", HOST, str(node.port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_store_and_duplicate(node: Node, study: Any) -> None:
    ds = dcmread(study.paths[0])
    assert _store(node.port, ds) == 0x0000
    assert _store(node.port, ds) == 0x0000  # a duplicate is accepted, kept once
    path = node.spool.instance_path(study.study_uid, ds.SOPInstanceUID)
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    (job,) = node.queue.jobs()
    assert (job.instances, job.duplicates) == (1, 1)
    assert node.queue.instances()[0]["calling_aet"] == "GOOD"


def test_unknown_calling_ae_rejected(node: Node) -> None:
    assoc = _assoc(node.port, calling="INTRUDER")
    assert assoc.is_rejected
    r = subprocess.run([tool("echoscu"), "-aet", "INTRUDER", "-aec", "AUTOSEG", HOST,
                        str(node.port)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert echo_ok(node.port, calling="GOOD")


def test_non_ct_sop_class_refused(node: Node, study: Any) -> None:
    assoc = _assoc(node.port, classes=(MR, CT))
    assert assoc.is_established
    cx = {c.abstract_syntax: c for c in assoc.rejected_contexts}
    assert MR in cx and cx[MR].result == 0x03  # abstract syntax not supported
    mr = dcmread(study.paths[1])
    mr.SOPClassUID = MR
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_store(mr)
    assert int(assoc.send_c_store(dcmread(study.paths[1])).Status) == 0  # CT still fine
    assoc.release()
    only_mr = _assoc(node.port, classes=(MR,))
    assert not only_mr.accepted_contexts
    if only_mr.is_established:
        only_mr.release()
    assert echo_ok(node.port, calling="GOOD")


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_corrupt_dataset_answered_c210(node: Node, study: Any, tmp_path: Path) -> None:
    src = study.paths[2]
    raw = src.read_bytes()
    ds = dcmread(src)
    meta_end = raw.index(b"\x08\x00")  # first group-0008 tag after the meta header
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw[:meta_end] + b"\x08\x00\x05\x00CS\xff\xff" + b"\xde\xad" * 50)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        assoc = _assoc(node.port)
        st = assoc.send_c_store(bad)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert int(st.Status) in (0xC210, 0xA900), hex(int(st.Status))
    assert not node.spool.instance_path(study.study_uid, ds.SOPInstanceUID).exists()
    assert node.queue.refusals()[-1]["status"] == int(st.Status)
    assert _store(node.port, ds) == 0


def test_missing_study_uid_answered_a900(node: Node, study: Any) -> None:
    ds = dcmread(study.paths[3])
    del ds.StudyInstanceUID
    assert _store(node.port, ds) == 0xA900
    assert "StudyInstanceUID" in node.queue.refusals()[-1]["reason"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_path_traversal_uid_answered_c211(node: Node, study: Any, tmp_path: Path) -> None:
    ds = dcmread(study.paths[4])
    ds.StudyInstanceUID = "../../evil"  # would land in tmp_path/evil
    _config.ENFORCE_UID_CONFORMANCE = False
    try:
        assert _store(node.port, ds) == 0xC211
        ds2 = dcmread(study.paths[4])
        ds2.SOPInstanceUID = "../../x"
        ds2.file_meta.MediaStorageSOPInstanceUID = "../../x"
        assert _store(node.port, ds2) in (0xC211, 0xA900)
    finally:
        _config.ENFORCE_UID_CONFORMANCE = True
    assert node.spool.root.parent == tmp_path
    assert not any(p.name in ("evil", "x.dcm") for p in tmp_path.rglob("*"))
    assert [r["status"] for r in node.queue.refusals()][-2:][0] == 0xC211
    assert echo_ok(node.port, calling="GOOD")


def test_max_associations(tmp_path: Path) -> None:
    n = _node(tmp_path, max_associations=2)
    try:
        a1, a2 = _assoc(n.port), _assoc(n.port)
        assert a1.is_established and a2.is_established
        a3 = _assoc(n.port)
        assert a3.is_rejected
        a1.release()
        a2.release()
        wait_until(lambda: echo_ok(n.port), 10, "a free association slot")
    finally:
        n.stop()


def test_spool_below_watermark_answers_a700(tmp_path: Path, study: Any) -> None:
    n = _node(tmp_path, min_free_mb=10**12)
    try:
        ds = dcmread(study.paths[0])
        assert _store(n.port, ds) == 0xA700
        assert "watermark" in n.queue.refusals()[-1]["reason"]
        assert echo_ok(n.port)  # still serving
        assert not any(n.spool.studies.iterdir())
    finally:
        n.stop()


def test_tls_echo_and_store(tmp_path: Path, study: Any) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    key, crt = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    n = _node(tmp_path, tls={"cert": str(crt), "key": str(key)})
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(crt))
        ctx.check_hostname = False
        ae = AE(ae_title="TLSCLIENT")
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_requested_context(CT, ExplicitVRLittleEndian)
        assoc = ae.associate(HOST, n.port, ae_title="AUTOSEG", tls_args=(ctx, HOST))
        assert assoc.is_established
        assert int(assoc.send_c_store(dcmread(study.paths[5])).Status) == 0
        assoc.release()
        assert not echo_ok(n.port)  # plain DICOM is not spoken on a TLS port
    finally:
        n.stop()


def test_one_node_per_spool(node: Node) -> None:
    from autoprompt_seg.errors import ConfigError

    cfg = build_config({"spool": str(node.spool.root), "host": HOST, "port": 0, "workers": 0})
    with pytest.raises(ConfigError, match="'spool'.*in use"):
        Node(cfg).start()
    assert echo_ok(node.port, calling="GOOD")
