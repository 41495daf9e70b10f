"""Configs under bad input (issue 12, items 3, 5 and 7): every numeric field of every config dataclass, walked with
``describe_fields``, given an out-of-range value, a wrong type, NaN, and ±inf unless the field opts in — each a
ConfigError naming the source, the dotted field and the allowed range; duplicate YAML keys name the file and line;
cross-field rules (the recipes' too); then the non-finite guard: a run whose every update is non-finite stops with
an error naming what went non-finite, in the library and through ``trqam train``."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from runkit import (
    cfg,
    data,
    fresh_accelerate_state,  # noqa: F401 (autouse fixture)
    prior,
)

from trqam_sdk.benchmarks.metaworld.recipe import MetaWorldRecipe, metaworld_recipe
from trqam_sdk.benchmarks.ogbench.demo import DemoOptions
from trqam_sdk.benchmarks.ogbench.recipe import Recipe
from trqam_sdk.benchmarks.recipes import EvalConfig, recipe_dir
from trqam_sdk.benchmarks.robomimic.recipe import RobomimicRecipe
from trqam_sdk.cli import main
from trqam_sdk.config import ConfigError, ConfigKeyError, ConfigTypeError, FinetuneConfig, load_config, validate
from trqam_sdk.conventions import Conventions
from trqam_sdk.methods.registry import get_method, method_names
from trqam_sdk.schema import ConfigBase, Range, describe_fields, from_dict, ranged
from trqam_sdk.training.finetuner import Finetuner


# ------------------------------------------------------------------------------------ generated cases
def _range_of(cls: type, key: str) -> Range | None:
    """The declared range of a dotted field (None: none declared)."""
    head, _, rest = key.partition(".")
    f = next(f for f in dataclasses.fields(cls) if f.name == head)
    if rest:
        return _range_of(typing.get_type_hints(cls)[head], rest)
    return f.metadata.get("range")


def numeric_fields(cls: type, skip: str = "\0") -> Iterator[tuple[str, str, Range | None]]:
    """(dotted key, "int" | "float", declared range) of every numeric leaf of ``cls``."""
    for f in describe_fields(cls):
        base = f.type.split(" |")[0]
        if base in ("int", "float") and not f.key.startswith(skip):
            yield f.key, base, _range_of(cls, f.key)


def _bad_values(kind: str, rng: Range | None) -> Iterator[tuple[str, Any]]:
    """(what, value): values the range forbids, wrong types, NaN, and ±inf: "range" where a bound refuses it,
    "finite" where only the finiteness rule does (the field does not opt in with ``allow_inf``)."""
    cast = int if kind == "int" else float
    if rng is not None:
        if rng.gt is not None:
            yield "range", cast(rng.gt)
            yield "range", cast(rng.gt - 1)
        if rng.ge is not None:
            yield "range", cast(rng.ge - 1)
        if rng.lt is not None:
            yield "range", cast(rng.lt)
        if rng.le is not None:
            yield "range", cast(rng.le + 1)
    yield "type", "abc"
    yield "type", True
    if kind == "int":
        yield "type", 1.5
        yield "type", math.inf
        return
    yield ("range" if rng is not None else "unranged"), math.nan
    for inf in (math.inf, -math.inf):
        if rng is None:
            yield "unranged", inf
        elif not rng.bounds_ok(inf):
            yield "range", inf
        elif not rng.allow_inf:
            yield "finite", inf


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _yaml_loader(tmp: Path, mapping: dict[str, Any]) -> tuple[Any, str]:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return lambda: load_config(FinetuneConfig, path), str(path)


def _from_dict(cls: type, where: str, required: dict[str, Any] | None = None) -> Callable[..., Any]:
    def load(tmp: Path, mapping: dict[str, Any]) -> tuple[Any, str]:
        return lambda: from_dict(cls, {**(required or {}), **mapping}, where=where), where
    return load


def _options(method: str) -> Callable[..., Any]:
    def load(tmp: Path, mapping: dict[str, Any]) -> tuple[Any, str]:
        return lambda: get_method(method).parse_options(mapping), f"method_options ({method})"
    return load


CLASSES: list[tuple[str, type, Callable[..., Any], str]] = [
    ("FinetuneConfig", FinetuneConfig, _yaml_loader, "\0"),
    ("DemoOptions", DemoOptions, _from_dict(DemoOptions, "demo.yaml"), "\0"),
    ("ogbench.Recipe", Recipe, _from_dict(Recipe, "cube-single.yaml[paper]", {"domain": "cube-single"}), "finetune."),
    ("robomimic.Recipe", RobomimicRecipe, _from_dict(RobomimicRecipe, "lift.yaml[paper]", {"task": "lift"}),
     "finetune."),
    ("metaworld.Recipe", MetaWorldRecipe, _from_dict(MetaWorldRecipe, "metaworld.yaml[cpu]"), "finetune."),
] + [(f"{m}.Options", get_method(m).Options, _options(m), "\0") for m in method_names()
     if dataclasses.fields(get_method(m).Options)]
"""(label, class, loader, prefix to skip); a recipe's ``finetune`` section is FinetuneConfig, tested above"""


def _cases() -> Iterator[Any]:
    for label, cls, loader, skip in CLASSES:
        for key, kind, rng in numeric_fields(cls, skip):
            values = list(_bad_values(kind, rng))
            for what, value in values:
                yield pytest.param(label, loader, key, what, value, rng, id=f"{label}:{key}={value!r}")


@pytest.mark.parametrize("label,loader,key,what,value,rng", list(_cases()))
def test_bad_numeric_value(label: str, loader: Callable[..., Any], key: str, what: str, value: Any,
                           rng: Range | None, tmp_path: Path) -> None:
    load, where = loader(tmp_path, _nested(key, value))
    with pytest.raises(ConfigError) as e:
        load()
    msg = str(e.value)
    assert msg.startswith(f"{where}: {key}: "), msg
    if what == "type":
        assert isinstance(e.value, ConfigTypeError) and f"{key}: expected " in msg
    elif what == "finite":
        want = f"must be finite and {rng}, got {value!r}" if str(rng) != "finite" else f"must be finite, got {value!r}"
        assert type(e.value) is ConfigError and msg.endswith(want), msg
    else:
        assert type(e.value) is ConfigError and f"must be {rng}, got" in msg


@pytest.mark.parametrize("key", ["lr", "qam_tau", "trust_region.lam_lr", "trust_region.lam_scale", "critic.rho",
                                 "trust_region.kl_clip_mult"])
def test_inf_where_only_a_lower_bound_is_declared(key: str, tmp_path: Path) -> None:
    load, where = _yaml_loader(tmp_path, _nested(key, math.inf))
    want = f"{where}: {key}: must be finite and {_range_of(FinetuneConfig, key)}, got inf"
    with pytest.raises(ConfigError, match=re.escape(want)):
        load()


def test_every_finetune_numeric_field_declares_a_range() -> None:
    unranged = [k for c in (FinetuneConfig, Conventions, DemoOptions) for k, _, r in numeric_fields(c) if r is None]
    assert unranged == []


def test_metaworld_recipe_numeric_fields_declare_ranges() -> None:
    assert [k for k, _, r in numeric_fields(MetaWorldRecipe, "finetune.") if r is None] == []


def test_every_recipe_and_option_numeric_field_declares_a_range() -> None:
    unranged = [f"{label}:{k}" for label, c, _, skip in CLASSES for k, _, r in numeric_fields(c, skip) if r is None]
    assert unranged == []


# ------------------------------------------------------------------------------------ hand-written cases
@pytest.mark.parametrize("text,line,first,key", [
    ("steps: 1\nlr: 0.1\nsteps: 2\n", 3, 1, "steps"),
    ("critic:\n  width: 8\n  depth: 1\n  width: 16\n", 4, 2, "width"),
    ("trust_region: {kl_budget: 0.1, kl_budget: 0.2}\n", 1, 1, "kl_budget"),
], ids=["top-level", "nested", "flow-mapping"])
def test_duplicate_yaml_keys_name_file_and_line(text: str, line: int, first: int, key: str, tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    want = f"{path}:{line}: duplicate key {key!r} (first at line {first})"
    with pytest.raises(ConfigKeyError, match=re.escape(want)):
        load_config(FinetuneConfig, path)


def test_duplicate_keys_in_a_recipe_file(tmp_path: Path) -> None:
    from trqam_sdk.benchmarks.ogbench.recipe import load_recipe

    path = tmp_path / "mine.yaml"
    path.write_text("domain: cube-single\nhorizon: 5\nprofiles:\n  paper:\n    bc_steps: 1\n    bc_steps: 2\n")
    with pytest.raises(ConfigKeyError, match=re.escape(f"{path}:6: duplicate key 'bc_steps' (first at line 5)")):
        load_recipe(path, "paper")


@pytest.mark.parametrize("text,match", [
    ("steps: yes\n", "steps: expected an integer, got 'yes' (str)"),
    ("steps: true\n", "steps: expected an integer, got True (bool)"),
    ("steps: 1e3.5\n", "steps: expected an integer"),
    ("lr: fast\n", "lr: expected a number, got 'fast'"),
    ("trust_region:\n  lam_min: 2.0\n  lam_max: 1.0\n", "trust_region.lam_min: must be <= lam_max = 1.0, got 2.0"),
    ("trust_region:\n  lam_init: 0.001\n", r"trust_region.lam_init: must be in [lam_min, lam_max] = [0.01, 100.0]"),
    ("trust_region:\n  lam_init: 500\n", r"trust_region.lam_init: must be in [lam_min, lam_max] = [0.01, 100.0]"),
    ("trust_region:\n  kl_budget_schedule: [[5, 0.1], [3, 0.2]]\n", "kl_budget_schedule[1]: steps must be >= 0 and "
                                                                   "increasing, got step 3 after 5"),
    ("trust_region:\n  kl_budget_schedule: [[5, -0.1]]\n", "kl_budget_schedule[0]: ε must be > 0, got -0.1"),
    ("trust_region:\n  kl_budget_schedule: [[5, .nan]]\n", "kl_budget_schedule[0]: ε must be > 0, got nan"),
    ("mixed_precision: fp8\n", "mixed_precision: must be one of ['auto', 'no', 'bf16', 'fp16'], got 'fp8'"),
    ("method: nosuch\n", "method: unknown method 'nosuch'"),
    ("stpes: 3\n", "stpes: unknown keys ['stpes'] (did you mean 'steps'?)"),
    ("critic: 3\n", "critic: expected a mapping of CriticConfig fields"),
    ("output_dir: ''\n", "output_dir: must not be empty"),
    ("grad_clip: -1\n", "grad_clip: must be > 0, got -1"),
    ("grad_clip: 0\n", "grad_clip: must be > 0, got 0"),
    ("critic:\n  discount: 1.5\n", "critic.discount: must be in (0, 1], got 1.5"),
], ids=lambda v: v if isinstance(v, str) and "\n" in v else None)
def test_bad_yaml_values(text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, path)
    assert str(e.value).startswith(f"{path}: ") and match in str(e.value), str(e.value)


def test_a_yaml_list_at_top_level(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("- steps: 1\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(FinetuneConfig, path)


@pytest.mark.parametrize("override,match", [
    ("lr=-1", "--set: lr: must be > 0, got -1"),
    ("critic.num_critics=0", "--set: critic.num_critics: must be >= 1, got 0"),
    ("trust_region.lam_min=300", "--set: trust_region.lam_min: must be <= lam_max = 100.0, got 300.0"),
    ("log_every=0", "--set: log_every: must be >= 1, got 0"),
])
def test_bad_set_overrides(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_config(FinetuneConfig, None, [override])


@pytest.mark.parametrize("mutate,match", [
    (lambda c: setattr(c.critic, "num_critics", 0), "FinetuneConfig: critic.num_critics: must be >= 1, got 0"),
    (lambda c: setattr(c, "grad_clip", -1.0), "FinetuneConfig: grad_clip: must be > 0, got -1.0"),
    (lambda c: setattr(c.trust_region, "lam_init", 0.0), "FinetuneConfig: trust_region.lam_init: must be > 0"),
    (lambda c: setattr(c, "flow_steps", 0), "FinetuneConfig: flow_steps: must be >= 1, got 0"),
    (lambda c: setattr(c, "batch_size", 0), "FinetuneConfig: batch_size: must be >= 1, got 0"),
    (lambda c: setattr(c, "method_options", {"sigma": 1}), "method_options (trqam): sigma: unknown keys"),
], ids=["num_critics-0", "grad_clip-negative", "lam_init-0", "flow_steps-0", "batch_size-0", "unknown-option"])
def test_a_mutated_config_is_refused_by_the_finetuner(mutate: Callable[[FinetuneConfig], None], match: str,
                                                      tmp_path: Path) -> None:
    c = cfg(tmp_path / "run")
    mutate(c)
    with pytest.raises(ConfigError, match=re.escape(match)):
        Finetuner(c, prior(), data())
    assert not (tmp_path / "run").exists()  # refused before the folder is made


def test_a_config_built_in_code_is_validated() -> None:
    from trqam_sdk.config import CriticConfig

    with pytest.raises(ConfigError, match=re.escape("CriticConfig: discount: must be in (0, 1], got 1.5")):
        CriticConfig(discount=1.5)
    c = FinetuneConfig(trackers=[])
    c.trust_region.lam_min = 500.0
    with pytest.raises(ConfigError, match=re.escape("x: trust_region.lam_min: must be <= lam_max")):
        validate(c, where="x")


# ------------------------------------------------------------------------------------ inf opt-in, recipe rules
@dataclass
class _Limits(ConfigBase):
    clip: float | None = ranged(1.0, gt=0, allow_inf=True)
    """inf: no clip"""
    free: float | None = ranged(None)
    """any finite number"""


@pytest.mark.parametrize("key,value,match", [
    ("clip", math.inf, None), ("clip", "inf", None), ("free", -1e30, None),
    ("clip", -math.inf, "must be > 0, got -inf"), ("clip", math.nan, "must be > 0, got nan"),
    ("clip", 0.0, "must be > 0, got 0.0"), ("free", math.inf, "must be finite, got inf"),
    ("free", -math.inf, "must be finite, got -inf"), ("free", math.nan, "must be finite, got nan"),
])
def test_inf_only_where_a_field_opts_in(key: str, value: Any, match: str | None) -> None:
    if match is None:
        assert getattr(from_dict(_Limits, {key: value}, where="x.yaml"), key) == float(value)
        return
    with pytest.raises(ConfigError) as e:
        from_dict(_Limits, {key: value}, where="x.yaml")
    assert type(e.value) is ConfigError and str(e.value) == f"x.yaml: {key}: {match}"


def test_help_shows_where_inf_is_allowed() -> None:
    assert [(f.key, f.range) for f in describe_fields(_Limits)] == [("clip", "> 0, or inf"), ("free", "finite")]


def _mw(over: dict[str, Any], match: str) -> tuple[Callable[[], Any], str]:
    return (lambda: from_dict(MetaWorldRecipe, over, where="mw.yaml")), f"mw.yaml: {match}"


def _mutated() -> None:
    r = metaworld_recipe("metaworld", "test")
    r.env.image_size = 40
    r.validate("again")


LEVEL, MULTIPLE = {"levels": {"a": 0.1}, "episodes_per_level": {"a": 1}}, "must be a multiple of 16"
UTD = "utd: must be a positive integer k or 1/m for an integer m (0.5, 0.25, ...), got"
OG, LOADED = "cube-single.yaml[paper]", f"{recipe_dir('metaworld') / 'metaworld.yaml'}[test]: "
RECIPE_CASES = {  # id: (what raises, how its message starts: the source, the dotted field, the problem)
    "image-size-40": _mw({"env": {"image_size": 40}},
                         f"env.image_size: {MULTIPLE} (the VLA's vision patch 8 × pixel shuffle 2), got 40"),
    "level-noise-negative": _mw({"data": {**LEVEL, "levels": {"a": -0.1}}}, "data.levels.a: must be finite and >= 0"),
    "level-noise-inf": _mw({"data": {**LEVEL, "levels": {"a": math.inf}}},
                           "data.levels.a: must be finite and >= 0, got inf"),
    "no-levels": _mw({"data": {"levels": {}, "episodes_per_level": {}}}, "data.levels: must name at least one"),
    "level-names-differ": _mw({"data": {**LEVEL, "episodes_per_level": {"b": 1}}},
                              "data.episodes_per_level: must name the same levels as levels ['a'], got ['b']"),
    "level-episodes-0": _mw({"data": {**LEVEL, "episodes_per_level": {"a": 0}}},
                            "data.episodes_per_level.a: must be in [1, 9999], got 0"),
    "reward-source": _mw({"reward": {"source": "nosuch"}}, "reward.source: unknown reward source 'nosuch'; known: "),
    "prior-kind": _mw({"prior": {"kind": "act"}}, "prior.kind: must be one of ['smolvla', 'pi0'], got 'act'"),
    "utd-0.3": _mw({"utd": 0.3}, f"{UTD} 0.3"),
    "utd-1.5": _mw({"utd": 1.5}, f"{UTD} 1.5"),
    "seed-negative": _mw({"seeds": [0, -1]}, "seeds[1]: must be in [0, 4294967295], got -1"),
    "ogbench-task-0": (lambda: from_dict(Recipe, {"domain": "x", "tasks": [1, 0]}, where=OG),
                       f"{OG}: tasks[1]: must be >= 1 (OGBench task numbers start at 1), got 0"),
    "ogbench-seed-2^32": (lambda: from_dict(Recipe, {"domain": "x", "seeds": [2**32]}, where=OG),
                          f"{OG}: seeds[0]: must be in [0, 4294967295], got 4294967296"),
    "loader-reward-source": (lambda: metaworld_recipe("metaworld", "test", {"reward": {"source": "nosuch"}}),
                             f"{LOADED}reward.source: unknown reward source 'nosuch'"),
    "loader-image-size-1000": (lambda: metaworld_recipe("metaworld", "test", {"env": {"image_size": 1000}}),
                               f"{LOADED}env.image_size: must be in [16, 480], got 1000"),
    "loader-threads-0": (lambda: metaworld_recipe("metaworld", "test", {"threads": 0}),
                         f"{LOADED}threads: must be >= 1, got 0"),
    "mutated-then-validate": (_mutated, f"again: env.image_size: {MULTIPLE}"),
    "code-eval-episodes-0": (lambda: EvalConfig(episodes=0), "EvalConfig: episodes: must be >= 1, got 0"),
    "code-eval-max-steps-inf": (lambda: EvalConfig(max_steps=math.inf), "EvalConfig: max_steps: expected int | null"),
    "code-utd-inf": (lambda: MetaWorldRecipe(utd=math.inf), "MetaWorldRecipe: utd: must be finite and > 0, got inf"),
    "code-kl-online-nan": (lambda: Recipe(domain="x", kl_budget_online=math.nan),
                           "Recipe: kl_budget_online: must be > 0, got nan"),
    "code-qam-tau-inf": (lambda: RobomimicRecipe(task="lift", qam_tau=math.inf),
                         "RobomimicRecipe: qam_tau: must be finite and > 0, got inf"),
    "code-target-entropy-inf": (lambda: get_method("dsrl").Options(target_entropy=-math.inf),
                                "DSRLOptions: target_entropy: must be finite, got -inf"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe_values(case: str) -> None:
    """Recipes' cross-field rules, the shipped-file loader, a mutated recipe, and recipe sections built in code."""
    build, match = RECIPE_CASES[case]
    with pytest.raises(ConfigError) as e:
        build()
    assert type(e.value) is ConfigError and str(e.value).startswith(match), str(e.value)


def test_cli_unknown_reward_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metaworld", "--profile", "test", "--reward", "nosuch", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trqam: error: ") and "reward.source: unknown reward source 'nosuch'" in err, err
    assert not (tmp_path / "out").exists()
