"""Configs: typed parsing, declared ranges, cross-field rules, the strict YAML loader, overrides, field docs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from trqam_sdk.config import (
    ConfigError,
    CriticConfig,
    FinetuneConfig,
    PolicyConfig,
    TrustRegionConfig,
    deep_merge,
    describe_fields,
    field_docs,
    from_dict,
    load_config,
    load_yaml,
    load_yaml_mapping,
    parse_overrides,
    to_dict,
    validate,
)
from trqam_sdk.schema import ConfigBase, ranged

CONFIGS = (CriticConfig, PolicyConfig, TrustRegionConfig, FinetuneConfig)


def nested(key: str, value: Any) -> dict[str, Any]:
    """'trust_region.lam_min', 0 -> {'trust_region': {'lam_min': 0}}"""
    *parents, leaf = key.split(".")
    out: dict[str, Any] = {leaf: value}
    for p in reversed(parents):
        out = {p: out}
    return out


BAD = [  # (dotted field, a value outside its range, the range as the message states it)
    ("lr", 0.0, "> 0"), ("lr", -3e-4, "> 0"), ("grad_clip", 0.0, "> 0"), ("qam_tau", 0.0, "> 0"),
    ("reference_tau", 0.0, "in (0, 1]"), ("reference_tau", 1.5, "in (0, 1]"), ("flow_steps", 0, ">= 1"),
    ("batch_size", 0, ">= 1"), ("steps", -1, ">= 0"), ("log_every", 0, ">= 1"), ("checkpoint_every", -1, ">= 0"),
    ("seed", -1, "in [0, 4294967295]"), ("seed", 2**32, "in [0, 4294967295]"),
    ("critic.num_critics", 0, ">= 1"), ("critic.width", 0, ">= 1"), ("critic.depth", 0, ">= 1"),
    ("critic.discount", 0.0, "in (0, 1]"), ("critic.discount", 1.01, "in (0, 1]"), ("critic.rho", -0.1, ">= 0"),
    ("critic.target_tau", 0.0, "in (0, 1]"), ("critic.target_tau", 2.0, "in (0, 1]"),
    ("policy.width", 0, ">= 1"), ("policy.depth", 0, ">= 1"),
    ("trust_region.kl_budget", 0.0, "> 0"), ("trust_region.lam_init", 0.0, "> 0"),
    ("trust_region.lam_lr", 0.0, "> 0"), ("trust_region.lam_min", -1.0, "> 0"), ("trust_region.lam_max", 0.0, "> 0"),
    ("trust_region.lam_scale", 0.0, "> 0"), ("trust_region.ema_rate", 0.0, "in (0, 1]"),
    ("trust_region.ema_rate", 1.5, "in (0, 1]"), ("trust_region.kl_clip_mult", 0.0, "> 0"),
    ("lr", float("nan"), "> 0"),
]


@pytest.mark.parametrize(("key", "value", "rng"), BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_out_of_range_values_are_rejected_naming_file_field_and_range(key: str, value: float, rng: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(FinetuneConfig, nested(key, value), where="cfg.yaml")
    assert str(e.value).startswith(f"cfg.yaml: {key}: must be {rng}, got "), str(e.value)


@pytest.mark.parametrize(("key", "value", "rng"), BAD[:12], ids=[f"{k}={v}" for k, v, _ in BAD[:12]])
def test_configs_built_in_code_are_validated_too(key: str, value: float, rng: str) -> None:
    with pytest.raises(ConfigError, match=rf"^FinetuneConfig: {key}: must be "):
        FinetuneConfig(**{key: value})


@pytest.mark.parametrize(("key", "value"), [
    ("critic.discount", 1.0), ("critic.rho", 0.0), ("critic.target_tau", 1.0), ("steps", 0), ("checkpoint_every", 0),
    ("seed", 2**32 - 1), ("trust_region.ema_rate", 1.0), ("reference_tau", 1.0), ("flow_steps", 1)])
def test_values_on_an_inclusive_bound_are_accepted(key: str, value: float) -> None:
    cfg = from_dict(FinetuneConfig, nested(key, value))
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    assert obj == value


def test_every_field_is_documented_and_every_number_has_a_range() -> None:
    for cls in CONFIGS:
        docs = field_docs(cls)
        assert sorted(docs) == sorted(f.name for f in dataclasses.fields(cls)), cls.__name__
    for f in describe_fields(FinetuneConfig):
        assert f.doc, f.key
        if {"int", "float"} & set(f.type.split(" | ")):  # float | null too
            assert f.range, f"{f.key} has no declared range"


@pytest.mark.parametrize(("over", "field_", "message"), [
    ({"lam_min": 2.0, "lam_max": 1.0}, "lam_min", "must be <= lam_max"),
    ({"lam_init": 200.0}, "lam_init", "must be in [lam_min, lam_max]"),
    ({"lam_init": 0.001}, "lam_init", "must be in [lam_min, lam_max]"),
    ({"kl_budget_schedule": [[10, 1.0], [5, 2.0]]}, "kl_budget_schedule[1]", "increasing"),
    ({"kl_budget_schedule": [[10, 1.0], [10, 2.0]]}, "kl_budget_schedule[1]", "increasing"),
    ({"kl_budget_schedule": [[-1, 1.0]]}, "kl_budget_schedule[0]", ">= 0"),
    ({"kl_budget_schedule": [[5, 0.0]]}, "kl_budget_schedule[0]", "ε must be > 0"),
])
def test_trust_region_cross_field_rules(over: dict[str, Any], field_: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(FinetuneConfig, {"trust_region": over}, where="cfg.yaml")
    assert str(e.value).startswith(f"cfg.yaml: trust_region.{field_}: ") and message in str(e.value), str(e.value)


def test_method_must_be_registered_and_output_dir_non_empty() -> None:
    with pytest.raises(ConfigError, match=r"method: unknown method 'sac'; known methods: \['bc', "):
        FinetuneConfig(method="sac")
    with pytest.raises(ConfigError, match="output_dir: must not be empty"):
        FinetuneConfig(output_dir="")
    assert FinetuneConfig(method="qam").method == "qam"


def test_validate_catches_mutations_after_construction() -> None:
    cfg = FinetuneConfig()
    cfg.trust_region.lam_min = 500.0  # recipes deep-copy and mutate
    with pytest.raises(ConfigError, match=r"^run: trust_region.lam_min: must be <= lam_max"):
        validate(cfg, "run")
    cfg.trust_region.lam_min = 0.01
    cfg.lr = "3e-4"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"^FinetuneConfig: lr: expected float, got '3e-4' \(str\)"):
        cfg.validate()
    cfg.lr = 1e-3
    validate(cfg)


def test_types_are_parsed_as_declared() -> None:
    cfg = from_dict(FinetuneConfig, {"lr": "3e-4", "qam_tau": 3, "steps": 1e6, "seed": "7", "batch_size": 32,
                                     "trust_region": {"kl_budget_schedule": [[10, 3]], "lam_scale": " 5 "}})
    assert cfg.lr == 3e-4 and type(cfg.lr) is float
    assert type(cfg.qam_tau) is float and cfg.qam_tau == 3.0
    assert cfg.steps == 1_000_000 and type(cfg.steps) is int and cfg.seed == 7
    schedule = cfg.trust_region.kl_budget_schedule
    assert schedule == [(10, 3.0)] and type(schedule[0][1]) is float
    assert cfg.trust_region.lam_scale == 5.0


@pytest.mark.parametrize(("data", "message"), [
    ({"steps": "yes"}, "steps: expected an integer, got 'yes'"),
    ({"steps": True}, "steps: expected an integer, got True"),
    ({"steps": 1.5}, "steps: expected an integer, got 1.5"),
    ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
    ({"lr": True}, "lr: expected a number, got True"),
    ({"critic": {"layer_norm": 1}}, "critic.layer_norm: expected true or false, got 1"),
    ({"critic": {"layer_norm": "yes"}}, "critic.layer_norm: expected true or false, got 'yes'"),
    ({"output_dir": 123}, "output_dir: expected a string (quote it), got 123"),
    ({"reference": "foo"}, "reference: must be one of ['ema', 'frozen'], got 'foo'"),
    ({"mixed_precision": False}, "mixed_precision: must be one of ['auto', 'no', 'bf16', 'fp16'], got False"),
    ({"trackers": "tensorboard"}, "trackers: expected a list (list[str]), got 'tensorboard'"),
    ({"trackers": [1]}, "trackers[0]: expected a string"),
    ({"trust_region": {"kl_budget_schedule": [[1, 2.0, 3]]}}, "trust_region.kl_budget_schedule[0]: expected 2 items"),
    ({"critic": 3}, "critic: expected a mapping of CriticConfig fields, got 3"),
    ({"method_options": [1]}, "method_options: expected a mapping"),
])
def test_wrong_types_are_rejected_with_the_dotted_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(FinetuneConfig, data, where="cfg.yaml")
    assert str(e.value).startswith(f"cfg.yaml: {message}"), str(e.value)
    assert isinstance(e.value, TypeError | ValueError)


@dataclass
class Extra(ConfigBase):
    name: str
    """required: no default"""
    limit: float | None = ranged(None, gt=0)
    """optional number"""
    ids: tuple[int, ...] = ()
    """variadic tuple"""
    weights: dict[str, float] = field(default_factory=dict)
    """a mapping of numbers"""
    where: Path = Path(".")
    """a path"""


def test_optional_union_tuple_dict_path_and_required_fields() -> None:
    e = from_dict(Extra, {"name": "x", "limit": "1e-2", "ids": [1, 2], "weights": {"a": 1}, "where": "runs"})
    assert e == Extra("x", 0.01, (1, 2), {"a": 1.0}, Path("runs")) and type(e.weights["a"]) is float
    assert from_dict(Extra, {"name": "x", "limit": None}).limit is None
    with pytest.raises(ConfigError, match=r"^extra.yaml: limit: must be > 0, got -1.0"):
        from_dict(Extra, {"name": "x", "limit": -1}, where="extra.yaml")
    with pytest.raises(ConfigError, match=r"^c: limit: expected float \| null, got 'big'"):
        from_dict(Extra, {"name": "x", "limit": "big"}, where="c")
    with pytest.raises(KeyError, match=r"^c: missing required keys \['name'\]"):
        from_dict(Extra, {}, where="c")


def test_unknown_keys_are_rejected_with_a_suggestion() -> None:
    with pytest.raises(KeyError) as e:
        from_dict(FinetuneConfig, {"trust_region": {"lam_mn": 0.1}}, where="cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: trust_region.lam_mn: unknown keys ['lam_mn'] (did you mean 'lam_min'?)"), msg
    assert "valid keys are ['ema_rate', " in msg and isinstance(e.value, ConfigError)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_numbers_and_booleans_follow_yaml_1_2(tmp_path: Path) -> None:
    p = write(tmp_path, "lr: 3e-4\nmixed_precision: no\ncritic: {layer_norm: false, discount: 1.}\n"
                        "steps: 1_000\n")
    cfg = load_yaml(FinetuneConfig, p)
    assert cfg.lr == 3e-4 and cfg.mixed_precision == "no" and cfg.critic.layer_norm is False
    assert cfg.critic.discount == 1.0 and cfg.steps == 1000
    assert yaml.safe_load("a: yes\nb: 3e-4") == {"a": True, "b": "3e-4"}, "PyYAML's own SafeLoader must be untouched"
    with pytest.raises(ConfigError, match=rf"^{p}: steps: expected an integer, got 'yes'"):
        load_yaml(FinetuneConfig, write(tmp_path, "steps: yes\n"))


def test_duplicate_keys_name_the_file_key_and_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "lr: 1e-3\nsteps: 5\nlr: 3e-4\n")
    with pytest.raises(ConfigError, match=rf"^{p}:3: duplicate key 'lr' \(first at line 1\)"):
        load_yaml(FinetuneConfig, p)
    q = write(tmp_path, "critic:\n  width: 32\n  depth: 2\n  width: 64\n", "nested.yaml")
    with pytest.raises(KeyError, match=rf"^{q}:4: duplicate key 'width' \(first at line 2\)"):
        load_yaml_mapping(q)


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_yaml(FinetuneConfig, tmp_path / "missing.yaml")
    bad = write(tmp_path, "lr: [1, 2\nsteps: 3\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:\d+: invalid YAML"):
        load_yaml_mapping(bad)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'l.yaml'}: expected a mapping at the top level, got list"):
        load_yaml_mapping(write(tmp_path, "- 1\n", "l.yaml"))
    assert load_yaml_mapping(write(tmp_path, "", "empty.yaml")) == {}
    sec = write(tmp_path, "finetune: {steps: 4}\nother: 1\n", "sec.yaml")
    assert load_yaml(FinetuneConfig, sec, section="finetune").steps == 4
    with pytest.raises(ConfigError, match=r"sec.yaml\[other\]: expected a mapping"):
        load_yaml(FinetuneConfig, sec, section="other")


def test_load_config_layers_defaults_file_and_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "steps: 5\ntrust_region: {kl_budget: 0.2, lam_lr: 0.5}\n")
    base = FinetuneConfig(batch_size=8, reference="frozen")
    cfg = load_config(FinetuneConfig, p, ["trust_region.kl_budget=1e-1", "trackers=[]"], base=base)
    assert (cfg.steps, cfg.batch_size, cfg.reference, cfg.trackers) == (5, 8, "frozen", [])
    assert (cfg.trust_region.kl_budget, cfg.trust_region.lam_lr) == (0.1, 0.5)
    assert base.trust_region.kl_budget == 0.5, "the base config must not be mutated"
    with pytest.raises(ConfigError, match=rf"^{p} \+ --set: trust_region.lam_lr: must be > 0, got -1.0"):
        load_config(FinetuneConfig, p, ["trust_region.lam_lr=-1"])
    with pytest.raises(ConfigError, match=r"^--set: batch_size: must be >= 1, got 0"):
        load_config(FinetuneConfig, None, ["batch_size=0"])
    with pytest.raises(ConfigError, match=rf"^{p}: steps: must be >= 0"):  # the file's own error names the file
        load_config(FinetuneConfig, write(tmp_path, "steps: -5\n"), ["steps=3"])


def test_parse_overrides_and_deep_merge() -> None:
    assert parse_overrides(["a.b=1", "a.c=3e-4", "d=[1, 2]", "e=no", "f="]) == {
        "a": {"b": 1, "c": 3e-4}, "d": [1, 2], "e": "no", "f": None}
    for bad in ("novalue", "a..b=1", "=3"):
        with pytest.raises(ConfigError, match="expected key=value with a dotted key"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="a is set to a value and used as a section"):
        parse_overrides(["a=1", "a.b=2"])
    with pytest.raises(ConfigError, match=r"--set a: not valid YAML"):
        parse_overrides(["a=[1"])
    base = {"x": {"y": 1, "z": [1]}, "w": 0}
    merged = deep_merge(base, {"x": {"y": 2}, "v": 3})
    assert merged == {"x": {"y": 2, "z": [1]}, "w": 0, "v": 3} and base == {"x": {"y": 1, "z": [1]}, "w": 0}
    merged["x"]["z"].append(2)
    assert base["x"]["z"] == [1]


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = FinetuneConfig(method="qam", lr=1e-3, critic=CriticConfig(num_critics=3, rho=0.0),
                         trust_region=TrustRegionConfig(kl_budget_schedule=[(100, 3.0)]), trackers=[])
    assert from_dict(FinetuneConfig, to_dict(cfg)) == cfg
    assert load_yaml(FinetuneConfig, write(tmp_path, yaml.safe_dump(to_dict(cfg)))) == cfg
    assert from_dict(FinetuneConfig, {}) == FinetuneConfig()


def test_draccus_built_configs_get_the_same_checks() -> None:
    """LeRobot users may parse our configs with draccus: the range checks still run (in __post_init__)."""
    draccus = pytest.importorskip("draccus")
    cfg = draccus.parse(FinetuneConfig, args=["--trust_region.kl_budget=0.1", "--lr=1e-3"])
    assert (cfg.trust_region.kl_budget, cfg.lr) == (0.1, 1e-3)
    with pytest.raises(Exception) as e:  # draccus wraps it in its ParsingError
        draccus.parse(FinetuneConfig, args=["--batch_size=0"])
    assert isinstance(e.value.__cause__, ConfigError), repr(e.value)
    assert str(e.value.__cause__) == "FinetuneConfig: batch_size: must be >= 1, got 0"
