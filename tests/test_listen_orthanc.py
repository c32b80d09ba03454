"""Orthanc (a real PACS, started here as a plain process on loopback) pushes a study to the
node through its REST API; the node sends the SEG back and Orthanc shows it in the study."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import tool
from test_listen_support import HOST, NodeProc, Proc, free_port, jobs, small_study, wait_until

pytestmark = pytest.mark.network


def _http(method: str, url: str, body: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback only
        data = r.read()
    return json.loads(data) if data else None


def test_orthanc_push_and_seg_back(tmp_path: Path) -> None:
    orthanc = tool("Orthanc")
    dicom_port, http_port, node_port = free_port(), free_port(), free_port()
    cfg = {
        "Name": "autoseg-test", "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "StableAge": 1,
        "DicomModalities": {"autoseg": ["AUTOSEG", HOST, node_port]}, "Plugins": [],
    }
    cfg_path = tmp_path / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg))
    base = f"http://{HOST}:{http_port}"
    pacs = Proc([orthanc, str(cfg_path)], tmp_path / "orthanc.log")
    node = None
    try:
        def up() -> bool:
            if pacs.p.poll() is not None:
                raise AssertionError(f"Orthanc exited:\n{pacs.log()}")
            try:
                return bool(_http("GET", f"{base}/system"))
            except OSError:
                return False

        wait_until(up, 60, "Orthanc's REST API", 0.3)
        s = small_study(tmp_path / "study", seed=31)
        for p in s.paths:
            _http("POST", f"{base}/instances", p.read_bytes())
        (study_id,) = _http("GET", f"{base}/studies")
        node = NodeProc(tmp_path / "spool", node_port, "--dest",
                        f"ORTHANC@{HOST}:{dicom_port}", "--quiet-period", "1",
                        "--allow", "ORTHANC", "--allow", "ECHOSCU")
        res = _http("POST", f"{base}/modalities/autoseg/store",
                    json.dumps({"Resources": [study_id], "Synchronous": True}).encode())
        assert res is not None
        (job,) = wait_until(lambda: [j for j in jobs(node.spool) if j.state in
                                     ("sent", "done", "failed")], 120, "the node's job")
        assert job.state == "sent", job.reason
        assert job.instances == len(s.paths)

        def seg_series() -> list[Any]:
            series = _http("GET", f"{base}/studies/{study_id}/series")
            return [x for x in series if x["MainDicomTags"].get("Modality") == "SEG"]

        (seg,) = wait_until(seg_series, 30, "the SEG series in Orthanc's study")
        assert len(_http("GET", f"{base}/studies")) == 1  # in the same study
        assert len(seg["Instances"]) == 1
        assert "association from ORTHANC" in node.log()
    finally:
        if node:
            node.stop()
        pacs.stop()
