"""Study TOML files: parsing, validation, splits and the paradigm plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprompt_seg.bench.study import (
    checkpoint_options,
    load_study,
    plan_jobs,
    split_cases,
    study_from_dict,
)
from autoprompt_seg.datasets import Case
from autoprompt_seg.errors import ConfigError


def _cases(n_patients: int, per_patient: int = 1) -> list[Case]:
    def vol():  # never called: planning does not load data
        raise AssertionError("planning must not load images")

    return [Case(case_id=f"P{p:02d}_{i}", patient_id=f"P{p:02d}", load_volume=vol,
                 load_label=lambda v: np.zeros(1), source=f"/data/P{p:02d}_{i}")
            for p in range(n_patients) for i in range(per_patient)]


BASE = {"dataset": {"name": "pycerr"}}


def test_minimal_file_and_relative_paths(tmp_path: Path):
    f = tmp_path / "study.toml"
    f.write_text('out = "res"\n[dataset]\nname = "pairs"\npath = "data"\n'
                 '[[method]]\nsegmenter = "classical"\ndetector = "oracle"\n'
                 'protocol = "every-k"\nk = 3\njitter_shift = 0.1\n')
    s = load_study(f)
    assert s.out == str(tmp_path / "res") and s.dataset_path == str(tmp_path / "data")
    (m,) = s.methods
    assert (m.segmenter, m.detector, m.protocol, m.k, m.jitter_shift) == \
        ("classical", "oracle", "every-k", 3, 0.1)
    assert m.paradigms == ("zero-shot",) and not s.trains


@pytest.mark.parametrize("doc, match", [
    ({"method": [{"segmenter": "classical"}]}, r"\[dataset\] table"),
    ({**BASE, "method": [{"segmenter": "classical"}], "colour": 1}, "unknown key.*colour"),
    ({**BASE, "method": [{"segmenter": "classical", "detectr": "x"}]}, "unknown key.*detectr"),
    ({**BASE, "method": [{"segmenter": "nope"}]}, "unknown segmenter 'nope'"),
    ({**BASE, "method": [{"segmenter": "classical", "paradigms": ["few-shot"],
                          "shots": [1]}]}, "needs a trainable segmenter"),
    ({**BASE, "method": [{"segmenter": "unet", "paradigms": ["few-shot"]}]},
     "few-shot needs shots"),
    ({**BASE, "method": [{"segmenter": "unet", "shots": [1]}]}, "without the few-shot"),
    ({**BASE, "method": [{"segmenter": "unet", "paradigms": ["one-shot"]}]},
     "paradigm 'one-shot'"),
    ({**BASE, "method": [{"segmenter": "unet", "train": {"epochz": 1}}]},
     r"unknown key.*epochz.*method.train"),
    ({**BASE}, r"no \[\[method\]\]"),
    ({**BASE, "method": [{"segmenter": "classical"}], "executor": "ray"}, "executor"),
])
def test_bad_files_name_the_problem(doc, match):
    with pytest.raises(ConfigError, match=match):
        study_from_dict(doc, "s.toml")


def test_invalid_toml_names_the_file(tmp_path: Path):
    f = tmp_path / "bad.toml"
    f.write_text("[dataset\nname=1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_study(f)


def test_training_split_never_leaks_a_patient_and_evaluates_only_the_test_split():
    s = study_from_dict({**BASE, "split": {"fractions": [0.5, 0.0, 0.5], "seed": 3},
                         "method": [{"segmenter": "unet", "paradigms": ["fine-tune"]}]})
    cases = _cases(6, per_patient=2)
    train, ev = split_cases(s, cases)
    assert {c.patient_id for c in train}.isdisjoint({c.patient_id for c in ev})
    assert len(train) == 6 and len(ev) == 6
    (job,) = plan_jobs(s, train)
    assert set(job.train_case_ids) == {c.case_id for c in train}


def test_without_training_every_case_is_evaluated():
    s = study_from_dict({**BASE, "method": [{"segmenter": "classical"}]})
    train, ev = split_cases(s, _cases(5))
    assert train == [] and len(ev) == 5


def test_few_shot_jobs_are_nested_seeded_and_bounded():
    s = study_from_dict({**BASE, "seed": 7, "split": {"fractions": [0.8, 0.0, 0.2]},
                         "method": [{"segmenter": "unet", "paradigms": ["zero-shot",
                                                                         "few-shot"],
                                     "shots": [1, 3]}]})
    train, _ = split_cases(s, _cases(10))
    jobs = plan_jobs(s, train)
    assert [(j.paradigm, j.shots) for j in jobs] == [("zero-shot", 0), ("few-shot", 1),
                                                     ("few-shot", 3)]
    assert set(jobs[1].train_case_ids) < set(jobs[2].train_case_ids)
    assert [j.train_case_ids for j in plan_jobs(s, train)] == [j.train_case_ids for j in jobs]
    big = study_from_dict({**BASE, "split": {"fractions": [0.5, 0.0, 0.5]},
                           "method": [{"segmenter": "unet", "paradigms": ["few-shot"],
                                       "shots": [9]}]})
    train, _ = split_cases(big, _cases(4))
    with pytest.raises(ConfigError, match=r"shots \[9\] exceed the 2 training patient"):
        plan_jobs(big, train)


def test_checkpoint_options_per_backend():
    assert checkpoint_options("medsam2", "f.pt") == {"medsam2": {"checkpoint": "f.pt"}}
    assert checkpoint_options("nnunet", "d") == {"nnunet": {"model_dir": "d"}}
    assert checkpoint_options("unet", "u.pt") == {"unet": {"checkpoint": "u.pt"}}


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "docs" / "examples")
                                        .glob("*.toml")), ids=lambda p: p.name)
def test_documented_example_configs_are_valid(path: Path):
    s = load_study(path)
    assert s.methods
