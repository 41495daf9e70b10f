"""``trqam metaworld``: one MetaWorld task and seed, end to end, resumable stage by stage.

data (scripted experts → LeRobotDataset) → prior (``lerobot-train``) → [success classifier] → offline (the SDK's
finetuner on the dataset) → online (the VLA acts in LeRobot's MetaWorld env, a replay buffer checkpointed with the
learner) → evaluation (the SDK's evaluator and ``lerobot-eval`` on the same env seeds) → ``result.json``.

Layout: ``out/<task>/`` holds what every method, seed and reward source of the task shares — ``data/``,
``prior/`` (one prior: a paired comparison), ``classifier/`` and their ``stages/*.json``. Runs live under
``out/<domain>/`` (``<domain>`` = the task, ``+<reward>`` when the reward is not the default sparse one, e.g.
``push-v3+env``): ``bc/seed<s>/result.json`` is the prior's evaluation; ``<method>/seed<s>/`` holds the fine-tune
(``checkpoints/``, ``replay/``, ``metrics.jsonl``, ``evals.jsonl``, ``offline.json``, ``online.json``, ``policy/``,
``lerobot_eval/``) and its ``result.json``, written last. Every stage writes its result atomically with the spec it
ran with; a re-run skips finished stages, resumes an interrupted fine-tune from its newest checkpoint, and refuses a
folder produced by another configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.benchmarks.metaworld.common import (
    base_result,
    domain_name,
    load_vla,
    repo_id,
    sdk_eval,
    settings_of,
)
from trqam_sdk.benchmarks.metaworld.recipe import MetaWorldRecipe
from trqam_sdk.benchmarks.metaworld.stages import cached_stage, measure, read_stage, write_stage
from trqam_sdk.benchmarks.recipes import PRIOR
from trqam_sdk.benchmarks.runner import headline
from trqam_sdk.config import to_dict
from trqam_sdk.io import atomic_write_text, read_json


# -- shared stages ---------------------------------------------------------------------------------------------------
def _stage_file(root: Path, name: str) -> Path:
    return root / "stages" / f"{name}.json"


def stage_data(recipe: MetaWorldRecipe, root: Path, seconds: dict[str, Any], progress: bool) -> dict[str, Any]:
    """The task's demonstrations (shared by every method and seed)."""
    from trqam_sdk.benchmarks.metaworld.generate import generate_dataset

    d = recipe.data
    spec = {"env": to_dict(recipe.env), "data": to_dict(d), "task": recipe.task}
    return cached_stage(_stage_file(root, "data"), spec, "data", seconds, lambda: generate_dataset(
        settings_of(recipe), root / "data", repo_id(recipe), levels=d.levels, episodes_per_level=d.episodes_per_level,
        seed=d.seed, workers=d.workers, progress=progress, post_success_steps=d.post_success_steps))


def stage_prior(recipe: MetaWorldRecipe, root: Path, seconds: dict[str, Any], progress: bool) -> Path:
    """The VLA prior, trained by ``lerobot-train`` on the demonstrations (shared by every method and seed)."""
    from trqam_sdk.integrations.lerobot.prior import train_prior

    p = recipe.prior
    spec = {"prior": to_dict(p), "horizon": recipe.horizon, "data": to_dict(recipe.data), "env": to_dict(recipe.env)}
    return Path(cached_stage(_stage_file(root, "prior"), spec, "prior", seconds, lambda: str(train_prior(
        p.kind, root / "data", repo_id(recipe), root / "prior", steps=p.steps, batch_size=p.batch_size,
        chunk_size=recipe.horizon, size=p.size, seed=p.seed, lr=p.lr, progress=progress))))


def stage_classifier(recipe: MetaWorldRecipe, root: Path, seconds: dict[str, Any]) -> dict[str, Any] | None:
    """LeRobot's reward classifier on the dataset's success labels (only for the ``classifier`` reward source);
    returns its held-out accuracy record."""
    if recipe.reward.source != "classifier":
        return None
    from trqam_sdk.rewards import train_success_classifier

    c = recipe.reward.classifier
    spec = {"classifier": to_dict(c), "seed": recipe.prior.seed, "data": to_dict(recipe.data)}
    return cached_stage(_stage_file(root, "classifier"), spec, "classifier", seconds, lambda: train_success_classifier(
        root / "data", repo_id(recipe), root / "classifier", steps=c.steps, batch_size=c.batch_size,
        held_out_episodes=c.held_out_episodes, seed=recipe.prior.seed, backbone=c.backbone))


# -- the run ---------------------------------------------------------------------------------------------------------
def run_metaworld(recipe: MetaWorldRecipe, method: str, seed: int, out: str | Path, profile: str = "",
                  progress: bool = True) -> dict[str, Any]:
    """One (task, method, seed): every stage it needs, skipping finished ones. ``method`` ``bc`` evaluates the
    prior; any registered fine-tuning method fine-tunes it. Returns (and writes) ``result.json``."""
    shared = Path(out) / recipe.task  # data, prior, classifier: one per task, whatever the reward of the runs
    root = Path(out) / domain_name(recipe)
    rdir = root / method / f"seed{seed}"
    done = rdir / "result.json"
    spec = run_spec(recipe, method, seed)
    if done.is_file():
        saved = read_json(done, "run result")
        if "spec" in saved and saved["spec"] != spec:
            raise ValueError(f"{done} is a finished run of another configuration; use another --out or delete "
                             f"{rdir} to redo it")
        return saved
    if method != PRIOR:
        recipe.finetune_config(method, seed, str(rdir))  # an unknown method or option fails before any work
    torch.set_num_threads(recipe.threads)
    seconds: dict[str, Any] = {}
    data_info = stage_data(recipe, shared, seconds, progress)
    prior_folder = stage_prior(recipe, shared, seconds, progress)
    result = base_result(recipe, method, seed, profile)
    result["data"] = {k: data_info[k] for k in ("episodes", "frames", "levels", "seconds") if k in data_info}
    prior_res = prior_evaluation(recipe, root, prior_folder, seed, seconds, progress)
    if method == PRIOR:
        result.update(headline(prior_res), phases={"prior": prior_res}, steps=0)
    else:
        classifier = stage_classifier(recipe, shared, seconds)
        if classifier is not None:
            result["classifier"] = classifier
        from trqam_sdk.benchmarks.metaworld.finetune import finetune

        result.update(finetune(recipe, method, seed, shared, rdir, prior_folder, prior_res, seconds, progress))
    result["seconds"], result["spec"] = seconds, spec
    rdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(done, json.dumps(result, indent=2, default=str))
    return result


def run_spec(recipe: MetaWorldRecipe, method: str, seed: int) -> dict[str, Any]:
    """What a finished run's numbers depend on (not which other methods and seeds the command also runs)."""
    spec = {k: v for k, v in to_dict(recipe).items() if k not in ("methods", "seeds", "paper", "threads")}
    return json.loads(json.dumps({**spec, "method": method, "seed": seed}, default=str))


def prior_evaluation(recipe: MetaWorldRecipe, root: Path, prior_folder: Path, seed: int, seconds: dict[str, Any],
                     progress: bool) -> dict[str, Any]:
    """The prior's SDK evaluation for ``seed`` (cached in ``bc/seed<s>/prior_eval.json``), on the env seeds every
    method of the seed is evaluated on."""
    from trqam_sdk.methods.base import FlowActor

    spec = {"eval": to_dict(recipe.eval), "env": to_dict(recipe.env), "flow_steps": recipe.finetune.flow_steps,
            "prior": str(prior_folder), "seed": seed}
    path = root / PRIOR / f"seed{seed}" / "prior_eval.json"
    saved = read_stage(path, spec)
    if saved is not None:
        return saved
    vla = load_vla(prior_folder, recipe.prior.kind)
    t0 = time.perf_counter()
    with measure(seconds, "prior_eval"):
        res = sdk_eval(recipe, FlowActor(vla, recipe.finetune.flow_steps, seed=seed), prior_folder, seed,
                       "eval prior", progress)
    res["seconds"] = time.perf_counter() - t0
    return write_stage(path, spec, res)
