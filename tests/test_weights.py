"""Weights handling: strict loading, refusals with their exit codes, verify, fetch, CLI.

Checkpoints are generated in exactly MedSAM2's format (``{"model": state_dict}`` of the
sam2.1 Hiera-tiny 512-px architecture, seeded random weights), once per session.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from autoprompt_seg import weights as W  # noqa: E402
from autoprompt_seg.errors import ConfigError, UnavailableError  # noqa: E402

UNKNOWN_STATE = "unknown file (untrained test checkpoint)"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def medsam2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MedSAM2-format checkpoint (seed 0), made once per session."""
    from autoprompt_seg.models.medsam2 import build_model

    torch.manual_seed(0)
    model = build_model("cpu")
    p = tmp_path_factory.mktemp("ckpt") / "random_medsam2.pt"
    torch.save({"model": model.state_dict()}, p)
    return p


@pytest.fixture(scope="session")
def hiera_small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sam2.1 Hiera-small weights (random) in the same format: the wrong architecture."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(sam2.__file__).parent / "configs/sam2.1/sam2.1_hiera_s.yaml")
    OmegaConf.resolve(cfg)
    torch.manual_seed(1)
    model = instantiate(cfg.model, _recursive_=True)
    p = tmp_path_factory.mktemp("ckpt") / "hiera_small.pt"
    torch.save({"model": model.state_dict()}, p)
    return p


def _manifest_with(name: str, **kw: str) -> dict[str, W.WeightsEntry]:
    m = W.load_manifest()
    m[name] = replace(m[name], **kw)
    return m


def test_manifest_lists_the_known_checkpoints() -> None:
    m = W.load_manifest()
    assert {"MedSAM2_latest", "MedSAM2_CTLesion", "MedSAM2_2411", "medsam_vit_b",
            "sam2.1_hiera_tiny", "nnunet_lung_detector"} <= set(m)
    assert m["MedSAM2_latest"].architecture == "sam2.1_hiera_tiny_512"
    assert m["MedSAM2_latest"].file == "MedSAM2_latest.pt"
    # pinned where independent public copies agree (issue 12); MedSAM2's are unpublished
    assert m["medsam_vit_b"].sha256 == ("34b34b78c1d18cb8c6bf84cf9c00e135"
                                        "d6d6c965699f3c0e31ef1bc9dcb5be74")
    assert m["medsam_vit_b"].size == 375_049_145
    assert m["sam2.1_hiera_tiny"].sha256 == ("7402e0d864fa82708a20fbd15bc84245"
                                             "c2f26dff0eb43a4b5b93452deb34be69")
    assert m["sam2.1_hiera_tiny"].size == 156_008_466
    assert m["sam2.1_hiera_tiny"].architecture == "sam2.1_hiera_tiny"
    for n in ("MedSAM2_latest", "MedSAM2_CTLesion", "MedSAM2_2411"):
        assert m[n].sha256 == "" and m[n].source.startswith(
            "https://huggingface.co/wanglab/MedSAM2/resolve/main/"), n
    for e in m.values():
        assert e.sha256 == "" or (len(e.sha256) == 64 and e.size > 0), e.name
        assert e.source == "" or e.source.startswith("https://"), e.name


def test_one_manifest_and_no_drift() -> None:
    """One manifest only (the package's), each URL with a source comment, and the docs
    quote exactly its pins."""
    import re

    text = W.manifest_text()
    src = ROOT / "src" / "autoprompt_seg" / W.MANIFEST_FILE
    assert src.read_text(encoding="utf-8") == text  # the installed package reads this file
    others = [p for p in ROOT.rglob("*.toml") if "manifest" in p.name and p != src
              and not any(part.startswith(".") or part in ("build", "dist")
                          for part in p.relative_to(ROOT).parts)]
    assert others == [], f"a second weights manifest: {others}"
    blocks = re.split(r"^\[weights\.", text, flags=re.M)[1:]
    for b in blocks:
        if re.search(r'^source = "https://', b, flags=re.M):
            assert re.search(r"^# Source: ", b, flags=re.M), b.splitlines()[0]
    docs = (ROOT / "docs" / "medsam2.md").read_text(encoding="utf-8")
    for e in W.load_manifest().values():
        if e.sha256:
            assert e.sha256 in docs, f"docs/medsam2.md does not quote the pin of {e.name}"
    quoted = set(re.findall(r"\b[0-9a-f]{64}\b", docs))
    assert quoted <= {e.sha256 for e in W.load_manifest().values()}, \
        "docs/medsam2.md quotes a sha256 that the manifest does not pin"


def test_strict_load_and_add(medsam2_ckpt: Path, tmp_path: Path) -> None:
    from autoprompt_seg.models.medsam2 import load_model, read_checkpoint

    sd = read_checkpoint(medsam2_ckpt)
    assert len(sd) == 471  # MedSAM2's key count
    model = load_model(medsam2_ckpt)  # strict=True inside; raises on any mismatch
    assert model.image_size == 512
    assert model.memory_attention.layers[0].self_attn.rope_k_repeat is False
    assert tuple(model.memory_attention.layers[0].cross_attn_image.freqs_cis.shape)[0] == 32 * 32

    wdir = tmp_path / "w"
    rec = W.add_weights(medsam2_ckpt, "MedSAM2_latest", wdir)
    dest = wdir / "MedSAM2_latest.pt"
    assert dest.is_file() and rec.sha256 == W.sha256_file(medsam2_ckpt)
    assert rec.known is False and rec.state == UNKNOWN_STATE and rec.origin == "add"
    recorded = json.loads((wdir / W.INSTALLED_JSON).read_text())
    assert recorded["MedSAM2_latest"]["sha256"] == rec.sha256
    assert W.installed_path("MedSAM2_latest", wdir) == dest
    states = {s.name: s.state for s in W.list_weights(wdir)}
    assert states["MedSAM2_latest"] == UNKNOWN_STATE
    assert states["MedSAM2_CTLesion"] == "not installed"
    res = {r.name: r for r in W.verify(wdir)}
    assert res["MedSAM2_latest"].ok and not res["MedSAM2_latest"].known
    assert not list(wdir.glob(".adding-*"))  # no leftovers from the atomic copy


def test_known_sha256_installs_as_verified_release(medsam2_ckpt: Path, tmp_path: Path) -> None:
    sha = W.sha256_file(medsam2_ckpt)
    m = _manifest_with("MedSAM2_CTLesion", sha256=sha)
    rec = W.add_weights(medsam2_ckpt, "MedSAM2_CTLesion", tmp_path, manifest=m)
    assert rec.known and rec.state == W.PINNED
    assert {r.name: r.known for r in W.verify(tmp_path, manifest=m, deep=False)}[
        "MedSAM2_CTLesion"]


def _refused(tmp_path: Path, file: Path, exc: type[Exception], code: int, *words: str,
             manifest: dict[str, W.WeightsEntry] | None = None) -> None:
    wdir = tmp_path / "w"
    with pytest.raises(exc) as ei:
        W.add_weights(file, "MedSAM2_latest", wdir, manifest=manifest)
    msg = str(ei.value)
    assert ei.value.exit_code == code  # type: ignore[attr-defined]
    assert str(file) in msg, msg
    for w in words:
        assert w in msg, msg
    assert not (wdir / "MedSAM2_latest.pt").exists()  # nothing installed


def test_truncated_checkpoint_is_refused(medsam2_ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.pt"
    data = medsam2_ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _refused(tmp_path, bad, UnavailableError, 69, "truncated or corrupt")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint" * 100)
    _refused(tmp_path, bad, UnavailableError, 69, "truncated or corrupt")


def test_state_dict_without_model_key_is_refused(medsam2_ckpt: Path, tmp_path: Path) -> None:
    sd = torch.load(medsam2_ckpt, map_location="cpu", weights_only=True)["model"]
    bad = tmp_path / "bare_state_dict.pt"
    torch.save(sd, bad)
    _refused(tmp_path, bad, ConfigError, 78, "'model'")


def test_hiera_small_checkpoint_is_refused(hiera_small_ckpt: Path, tmp_path: Path) -> None:
    _refused(tmp_path, hiera_small_ckpt, ConfigError, 78, "does not fit", "unexpected key")


def test_wrong_shapes_are_refused(medsam2_ckpt: Path, tmp_path: Path) -> None:
    obj = torch.load(medsam2_ckpt, map_location="cpu", weights_only=True)
    obj["model"]["image_encoder.trunk.pos_embed"] = torch.zeros(1, 96, 14, 14)
    bad = tmp_path / "wrong_shape.pt"
    torch.save(obj, bad)
    _refused(tmp_path, bad, ConfigError, 78, "shape mismatch", "pos_embed")


def test_sha256_mismatch_is_refused(medsam2_ckpt: Path, tmp_path: Path) -> None:
    m = _manifest_with("MedSAM2_latest", sha256="0" * 64)
    _refused(tmp_path, medsam2_ckpt, UnavailableError, 69, "sha256", "manifest", manifest=m)


def test_unknown_name_is_a_config_error(medsam2_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'name'.*'nope'"):
        W.add_weights(medsam2_ckpt, "nope", tmp_path)
    with pytest.raises(ConfigError, match="--name"):
        W.add_weights(medsam2_ckpt, None, tmp_path)  # file name says nothing


def test_verify_finds_a_changed_file(medsam2_ckpt: Path, tmp_path: Path) -> None:
    W.add_weights(medsam2_ckpt, "MedSAM2_latest", tmp_path)
    with open(tmp_path / "MedSAM2_latest.pt", "ab") as f:
        f.write(b"tampered")
    res = {r.name: r for r in W.verify(tmp_path, deep=False)}["MedSAM2_latest"]
    assert not res.ok and res.exit_code == 69 and "differs from the one recorded" in res.problem


def test_fetch_fails_fast_without_network(tmp_path: Path) -> None:
    m = _manifest_with("MedSAM2_latest", source="http://127.0.0.1:9/MedSAM2_latest.pt")
    t0 = time.perf_counter()
    with pytest.raises(UnavailableError) as ei:
        W.fetch("MedSAM2_latest", tmp_path, timeout=3, manifest=m)
    assert time.perf_counter() - t0 < 10
    assert "cannot download MedSAM2_latest" in str(ei.value)
    assert "autoseg weights add" in str(ei.value)
    with pytest.raises(UnavailableError, match="no download source"):
        W.fetch("nnunet_lung_detector", tmp_path)


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    from click.testing import CliRunner

    from autoprompt_seg.cli.weights import weights

    r = CliRunner().invoke(weights, list(args), env=env)
    return r.exit_code, r.output


def test_cli_help_has_examples() -> None:
    for sub in ((), ("list",), ("add",), ("verify",), ("path",), ("fetch",)):
        code, out = _cli(*sub, "--help")
        assert code == 0 and "Example" in out, (sub, out)
    assert "AUTOSEG_WEIGHTS_DIR" in _cli("add", "--help")[1]


def test_cli_add_list_verify_path(medsam2_ckpt: Path, tmp_path: Path) -> None:
    wdir = tmp_path / "w"
    code, out = _cli("add", str(medsam2_ckpt), "--name", "MedSAM2_latest",
                     env={"AUTOSEG_WEIGHTS_DIR": str(wdir)})
    assert code == 0, out
    assert UNKNOWN_STATE in out and W.sha256_file(medsam2_ckpt) in out
    code, out = _cli("list", "--json", "--weights-dir", str(wdir))
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["MedSAM2_latest"]["state"] == UNKNOWN_STATE
    code, out = _cli("verify", "--weights-dir", str(wdir))
    assert code == 0 and f"MedSAM2_latest: ok, {UNKNOWN_STATE}" in out
    code, out = _cli("path", "MedSAM2_latest", "--weights-dir", str(wdir))
    assert code == 0 and out.strip() == str(wdir / "MedSAM2_latest.pt")
    code, out = _cli("path", "MedSAM2_CTLesion", "--weights-dir", str(wdir))
    assert code == 69


def test_cli_refusals_exit_codes(hiera_small_ckpt: Path, tmp_path: Path) -> None:
    code, out = _cli("add", str(hiera_small_ckpt), "--name", "MedSAM2_latest",
                     "--weights-dir", str(tmp_path))
    assert code == 78 and "does not fit" in out and str(hiera_small_ckpt) in out
    bad = tmp_path / "MedSAM2_latest.pt"
    bad.write_bytes(b"\0" * 1000)
    code, out = _cli("add", str(bad), "--weights-dir", str(tmp_path / "w2"))
    assert code == 69 and "truncated or corrupt" in out


def test_cli_verify_fails_on_changed_file(medsam2_ckpt: Path, tmp_path: Path) -> None:
    W.add_weights(medsam2_ckpt, "MedSAM2_latest", tmp_path)
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"oops")
    code, out = _cli("verify", "--quick", "--weights-dir", str(tmp_path))
    assert code == 69 and "MedSAM2_latest" in out
