"""The demo data helpers of ``data.py`` (what ``autoseg demo`` uses), without the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprompt_seg import data


def test_synthetic_demo_study_is_written_once_then_reused(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprompt_seg.synthetic as synthetic

    calls: list[int] = []
    real = synthetic.synthetic_study

    def small(out_dir, **kw):  # the real writer on a tiny grid, counted
        calls.append(kw["seed"])
        return real(out_dir, shape=(16, 96, 96), spacing=kw["spacing"], n_tumours=1,
                    seed=kw["seed"])

    monkeypatch.setattr(synthetic, "synthetic_study", small)
    cache = tmp_path / "cache"
    first = data.synthetic_demo_study(cache, seed=3)
    assert first == cache / "synthetic-seed3" and len(list(first.glob("*.dcm"))) == 16
    assert data.synthetic_demo_study(cache, seed=3) == first and calls == [3]
    # no temporary folder left beside it
    assert sorted(p.name for p in cache.iterdir()) == ["synthetic-seed3"]
    # a half-written folder (no .dcm) is replaced
    other = cache / "synthetic-seed4"
    other.mkdir()
    (other / "junk.txt").write_text("x")
    got = data.synthetic_demo_study(cache, seed=4)
    assert calls == [3, 4] and not (got / "junk.txt").exists() and any(got.glob("*.dcm"))


def test_pycerr_study_refuses_an_unknown_patient(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'patient'.*pat_9"):
        data.pycerr_study("pat_9", tmp_path)


def test_a_study_another_process_published_first_is_kept(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes fetching at once: the one that finishes second must not delete the
    first one's complete copy, which the first may be reading (it used to, and a
    concurrent evaluation then failed with missing slices)."""
    import autoprompt_seg.synthetic as synthetic

    real = synthetic.synthetic_study
    cache = tmp_path / "cache"

    def racing(out_dir, **kw):  # while this process writes, another one publishes
        winner = cache / f"synthetic-seed{kw['seed']}"
        real(winner, shape=(16, 96, 96), spacing=kw["spacing"], n_tumours=1, seed=kw["seed"])
        (winner / "winner.txt").write_text("being read")
        return real(out_dir, shape=(16, 96, 96), spacing=kw["spacing"], n_tumours=1,
                    seed=kw["seed"])

    monkeypatch.setattr(synthetic, "synthetic_study", racing)
    got = data.synthetic_demo_study(cache, seed=5)
    assert (got / "winner.txt").read_text() == "being read"
    assert sorted(p.name for p in cache.iterdir()) == ["synthetic-seed5"]


def test_data_in_an_sdist_is_unpacked_without_leaving_its_prefix(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``_fetch_members`` on a source archive, as for PyRadiomics' and TotalSegmentator's
    test files: pip's download is replaced by a tar.gz written here; only the kept files
    under the prefix are unpacked, a member that climbs out with ``..`` is not, the sdist
    is asked for by name, and a second call does not download again."""
    import io
    import subprocess
    import tarfile

    calls: list[list[str]] = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-d") + 1]) / "pkg-1.0.tar.gz"
        with tarfile.open(out, "w:gz") as tf:
            for name, text in (("pkg-1.0/data/lung1_image.nrrd", b"image"),
                               ("pkg-1.0/data/brain1_image.nrrd", b"other"),
                               ("pkg-1.0/data/../../evil.txt", b"x"),
                               ("pkg-1.0/setup.py", b"")):
                info = tarfile.TarInfo(name)
                info.size = len(text)
                tf.addfile(info, io.BytesIO(text))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    target = tmp_path / "cache" / "pkg" / "data"

    def fetch() -> None:
        data._fetch_members("pkg==1.0", "pkg-1.0.tar.gz", "pkg-1.0/data/", target,
                            lambda t: (t / "lung1_image.nrrd").is_file(), "test data",
                            keep=lambda name: name.startswith("lung"), sdist=True)

    fetch()
    assert sorted(p.name for p in target.rglob("*")) == ["lung1_image.nrrd"]
    assert (target / "lung1_image.nrrd").read_bytes() == b"image"
    assert not list(tmp_path.rglob("evil.txt"))
    assert calls[0][calls[0].index("--no-binary") + 1] == "pkg"
    fetch()
    assert len(calls) == 1


def test_a_failed_download_names_the_package_and_pips_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from autoprompt_seg.errors import UnavailableError

    def failing_pip(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: a location is ignored\nERROR: No matching distribution\n"
                        "WARNING: trailing warning\n")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(UnavailableError, match=r"pyradiomics-bhklab==.*No matching distribution"):
        data.fetch_wholechest_cases(tmp_path)
    assert not list((tmp_path).rglob("*.nrrd"))
