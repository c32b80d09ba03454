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
