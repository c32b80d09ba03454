"""The shared backend-options parser (autoprompt_seg.options) and --set's text values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoprompt_seg import registry
from autoprompt_seg.errors import ConfigError
from autoprompt_seg.options import describe_options, parse_options, parse_text


@dataclass(frozen=True)
class _Opts:
    window: tuple[float, float] = (-600.0, 1500.0)
    threshold: float = 0.5
    count: int = 3
    steps: float = 10  # a count typed as a number: an int stays an int
    flag: bool = False
    name: str = "x"
    folder: Path | None = None
    folds: tuple[int | str, ...] | None = None
    margin_mm: float = field(default=2.0, metadata={"help": "mm around the box"})

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"Option 'demo.threshold' must lie in (0, 1]; got "
                              f"{self.threshold!r}")


def test_good_values_are_typed():
    o = parse_options(_Opts, {"window": [-500, 1400], "threshold": 1, "count": 4, "steps": 4,
                              "flag": True, "folder": "~/m", "folds": [0, "all"]}, "demo")
    assert o.window == (-500.0, 1400.0) and isinstance(o.window[0], float)
    assert o.threshold == 1.0 and isinstance(o.threshold, float)
    assert o.steps == 4 and isinstance(o.steps, int)
    assert o.count == 4 and o.flag is True
    assert o.folder == Path("~/m").expanduser() and o.folds == (0, "all")
    assert parse_options(_Opts, None, "demo") == _Opts()


@pytest.mark.parametrize("raw, key, expected", [
    ({"threshold": "high"}, "demo.threshold", "a number"),
    ({"count": 2.5}, "demo.count", "an integer"),
    ({"flag": 1}, "demo.flag", "true or false"),
    ({"window": [1, 2, 3]}, "demo.window", "a list of 2 (a number, a number)"),
    ({"name": 3}, "demo.name", "a string"),
])
def test_a_wrong_type_names_key_value_and_expected_type(raw, key, expected):
    with pytest.raises(ConfigError) as e:
        parse_options(_Opts, raw, "demo")
    msg = str(e.value)
    assert f"'{key}'" in msg and expected in msg and repr(next(iter(raw.values()))) in msg


def test_unknown_keys_are_refused_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'thresh'; known: count, flag"):
        parse_options(_Opts, {"thresh": 0.5}, "demo")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_options(_Opts, [1], "demo")  # type: ignore[arg-type]


def test_unknown_keys_name_the_values_given():
    with pytest.raises(ConfigError) as e:
        parse_options(_Opts, {"thresh": 0.5, "count": 2}, "demo")
    assert str(e.value).endswith("; got {'thresh': 0.5}")


@dataclass(frozen=True)
class _Table:
    weights: Mapping[str, float] = field(default_factory=dict)
    n: int = 1


def test_tables_and_numpy_scalars():
    import numpy as np

    o = parse_options(_Table, {"weights": {"a": 1, "b": np.float32(0.5)}, "n": np.int64(3)},
                      "demo")
    assert o.weights == {"a": 1.0, "b": 0.5} and isinstance(o.weights["a"], float)
    assert o.n == 3 and type(o.n) is int
    for raw, expected in (({"weights": [1]}, "a table (a string -> a number)"),
                          ({"weights": {"a": "x"}}, "a table (a string -> a number)"),
                          ({"n": np.float64(2.0)}, "an integer"),
                          ({"n": np.bool_(True)}, "an integer")):
        with pytest.raises(ConfigError) as e:
            parse_options(_Table, raw, "demo")
        key, value = next(iter(raw.items()))
        assert str(e.value) == f"Option 'demo.{key}' must be {expected}; got {value!r}"


def test_range_checks_stay_in_the_dataclass():
    with pytest.raises(ConfigError, match=r"demo.threshold' must lie in \(0, 1\]; got 2.0"):
        parse_options(_Opts, {"threshold": 2}, "demo")


@pytest.mark.parametrize("key, text, value", [
    ("window", "-600,1500", (-600.0, 1500.0)),
    ("threshold", "0.25", 0.25),
    ("count", "7", 7),
    ("steps", "4", 4),
    ("flag", "true", True),
    ("flag", "off", False),
    ("name", "abc", "abc"),
    ("folder", "none", None),
    ("folds", "0,1,all", (0, 1, "all")),
])
def test_text_values_of_set(key, text, value):
    got = parse_text(_Opts, "demo", key, text)
    assert got == value and type(got) is type(value)


def test_text_values_of_set_errors():
    with pytest.raises(ConfigError, match=r"'demo.count' must be an integer; got '2.5'"):
        parse_text(_Opts, "demo", "count", "2.5")
    with pytest.raises(ConfigError, match="unknown key 'nope'; known: count"):
        parse_text(_Opts, "demo", "nope", "1")


def test_describe_options_gives_defaults_and_units():
    rows = {r["key"]: r for r in describe_options(_Opts)}
    assert rows["window"]["default"] == [-600.0, 1500.0]
    assert rows["margin_mm"]["help"] == "mm around the box"
    assert rows["threshold"]["type"] == "a number"


def test_registry_set_options_types_and_merges():
    out = registry.set_options({"nnunet": {"model_dir": "m"}, "veto": "trunk"},
                               ["candidates.min_thickness_mm=4", "nnunet.folds=0,1",
                                "veto.min_inside_frac=0.7"])
    assert out["candidates"] == {"min_thickness_mm": 4.0}
    assert out["nnunet"] == {"model_dir": "m", "folds": (0, 1)}
    assert out["veto"] == {"model": "trunk", "min_inside_frac": 0.7}
    for bad, match in (("candidates.min_thickness_mm", "BACKEND.KEY=VALUE"),
                       ("candidatez.x=1", "unknown backend 'candidatez'"),
                       ("candidates.min_thickness=4", "unknown key 'min_thickness'"),
                       ("classical.upper_hu=high", "'classical.upper_hu' must be a number")):
        with pytest.raises(ConfigError, match=match):
            registry.set_options({}, [bad])


def test_every_declared_backend_options_class_parses_its_defaults():
    names = {b.name for b in registry.BACKENDS if b.options} | set(registry.EXTRA_OPTIONS)
    for name in sorted(names - {"veto"}):
        cls = registry.options_class(name)
        assert parse_options(cls, {}, name) == cls()
        assert describe_options(cls)


@pytest.mark.parametrize("options", [
    {"oracle": {"prompts_from": "/no/such/gt.nii.gz"}},
    {"prompts_from": "/no/such/gt.nii.gz"},  # the deprecated flat key still works
])
def test_oracle_reads_its_nested_options_and_the_flat_alias(options):
    from autoprompt_seg.config import Settings

    with pytest.raises(ConfigError, match="--prompts-from /no/such/gt.nii.gz: no such file"):
        registry.get("detector", "oracle").create(Settings(options=options))
    with pytest.raises(ConfigError, match="'oracle.roi_name' must be a string; got 3"):
        registry.get("detector", "oracle").create(
            Settings(options={"oracle": {"prompts_from": "x", "roi_name": 3}}))
