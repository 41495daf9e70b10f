"""One pipeline for every benchmark and for the demo: BC prior → offline → optional online → evaluation.

Layout under ``out`` (``<run>`` = :meth:`Benchmark.run_path`, e.g. ``cube-double/task1``): ``<run>/bc_prior/seed<s>/``
holds the seed's prior (shared by every method of that seed, so methods start from the same policy and are
evaluated on the same env seeds, a paired comparison) and its evaluation; ``<run>/<method>/seed<s>/`` holds
``result.json`` (written last, atomically: its presence means the run finished, which is how sweeps resume),
``evals.jsonl`` (success over steps, the prior's at step 0), ``metrics.jsonl`` and the fine-tuned ``policy/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trqam_sdk.benchmarks.base import Benchmark
from trqam_sdk.benchmarks.recipes import PRIOR, RecipeBase
from trqam_sdk.config import to_dict
from trqam_sdk.io import append_jsonl, atomic_write_text, read_json, write_jsonl


def run_dir(out: str | Path, bench: Benchmark, recipe: RecipeBase, task: str, method: str, seed: int) -> Path:
    return Path(out) / bench.run_path(recipe, task) / method / f"seed{seed}"


def _sha(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prior_spec(recipe: RecipeBase, train: Any, seed: int) -> dict[str, Any]:
    """What the BC prior depends on: a cached prior with another spec is stale and trained again."""
    h = hashlib.sha1()
    for t in (train.observations, train.actions, train.terminals):
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    f = recipe.finetune
    return {"seed": seed, "bc_steps": recipe.bc_steps, "horizon": recipe.horizon, "policy": to_dict(f.policy),
            "batch_size": f.batch_size, "lr": f.lr, "conventions": to_dict(f.conventions),
            "data": {"rows": len(train), "sha1": h.hexdigest()}}


def bc_prior(recipe: RecipeBase, train: Any, seed: int, folder: Path, progress: bool = False) -> Any:
    """The seed's MLP BC prior, trained once and cached as a policy folder (with the spec it was trained
    from, ``bc_prior.json``): every method of the seed starts from it."""
    from trqam_sdk.adapters import load_policy
    from trqam_sdk.adapters.mlp import MLPFlowPolicy, MLPPolicyConfig
    from trqam_sdk.networks.mlp import reinit_
    from trqam_sdk.training.bc import pretrain_bc

    spec, spec_file = prior_spec(recipe, train, seed), folder / "bc_prior.json"
    if (folder / "model.safetensors").is_file() and spec_file.is_file() and read_json(spec_file, "prior spec") == spec:
        return load_policy(folder)
    p, conv = recipe.finetune.policy, recipe.finetune.conventions
    torch.manual_seed(seed)
    policy = MLPFlowPolicy(MLPPolicyConfig(train.obs_dim, recipe.horizon, train.action_dim, p.width, p.depth,
                                           p.layer_norm))
    if conv.init != "lecun_normal":  # the adapter builds lecun-normal kernels: re-draw them, same seeded stream
        reinit_(policy, conv.init)
    pretrain_bc(policy, train, recipe.bc_steps, batch_size=recipe.finetune.batch_size, lr=recipe.finetune.lr,
                seed=seed, progress=progress, conventions=conv)
    policy.save_pretrained(folder)
    (folder / "prior_eval.json").unlink(missing_ok=True)  # an evaluation of an older prior
    atomic_write_text(spec_file, json.dumps(spec, indent=1))
    return policy


def evaluate_policy(bench: Benchmark, recipe: RecipeBase, task: str, policy: Any, seed: int,
                    progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """``recipe.eval.episodes`` episodes of ``policy`` on env seeds derived from ``seed`` (see rollout.evaluation).

    ``policy`` is a flow policy (sampled by its ODE) or an acting policy from ``Agent.make_actor``."""
    from trqam_sdk.adapters.base import FlowPolicy
    from trqam_sdk.rollout.evaluation import FlowActor, evaluate

    e = recipe.eval
    act = FlowActor(policy, recipe.finetune.flow_steps) if isinstance(policy, FlowPolicy) else policy
    return evaluate(act, bench.env_factory(recipe, task, "eval"),
                    e.episodes, seed=seed, workers=e.workers or None, progress=progress, desc=desc)


def prior_eval(bench: Benchmark, recipe: RecipeBase, task: str, prior: Any, seed: int, folder: Path,
               progress: bool = False) -> dict[str, float]:
    """The prior's evaluation, cached next to it (keyed by the evaluation settings and env)."""
    key = _sha({"eval": to_dict(recipe.eval), "flow_steps": recipe.finetune.flow_steps, "seed": seed,
                "env": repr(bench.env_factory(recipe, task, "eval"))})
    cache = folder / "prior_eval.json"
    if cache.is_file():
        saved = read_json(cache, "cached prior evaluation")
        if saved.get("key") == key:
            return saved["result"]
    res = evaluate_policy(bench, recipe, task, prior, seed, progress, desc="eval BC prior")
    atomic_write_text(cache, json.dumps({"key": key, "result": res}, indent=1))
    return res


def headline(res: dict[str, float]) -> dict[str, Any]:
    """The result file's headline fields of an evaluation (rate, counts, 95 % interval)."""
    return {"success": res["success_rate"], "successes": int(res["successes"]), "episodes": int(res["episodes"]),
            "ci95": [res["ci95_low"], res["ci95_high"]]}


def run_one(bench: Benchmark, recipe: RecipeBase, task: str | int, method: str, seed: int,
            out: str | Path, profile: str = "", progress: bool = False) -> dict[str, Any]:
    """One (recipe, task, method, seed) run; returns (and writes) its result. A finished run (``result.json``
    present) is not redone. ``method`` ``bc`` evaluates the prior; any other registered method fine-tunes it."""
    task = bench.check_task(recipe, str(task))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    rdir = run_dir(out, bench, recipe, task, method, seed)
    done = rdir / "result.json"
    if done.is_file():
        return read_json(done, "run result")
    if method != PRIOR:
        recipe.finetune_config(method, seed, str(rdir))  # an unknown method fails before any work is done
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    train = bench.load_data(recipe, task, progress)
    t_data = time.perf_counter()
    pdir = run_dir(out, bench, recipe, task, "bc_prior", seed)
    prior = bc_prior(recipe, train, seed, pdir, progress)
    bench.save_policy_extras(recipe, task, pdir)
    t_prior = time.perf_counter()
    pre = prior_eval(bench, recipe, task, prior, seed, pdir, progress)
    seconds = {"data": t_data - t0, "prior": t_prior - t_data, "prior_eval": time.perf_counter() - t_prior}
    rdir.mkdir(parents=True, exist_ok=True)
    evals = rdir / "evals.jsonl"
    write_jsonl(evals, [{"step": 0, "phase": "prior", **pre}])  # a fresh run: an unfinished earlier log replaced

    def log_eval(step: int, res: dict[str, float], phase: str) -> None:
        append_jsonl(evals, {"step": step, "phase": phase, **res})

    result: dict[str, Any] = {"benchmark": bench.name, "domain": bench.domain(recipe), "task": task,
                              "method": method, "seed": seed, "profile": profile,
                              "data": {**bench.data_info(recipe, task), "transitions": len(train)}}
    if method == PRIOR:
        result.update(headline(pre), phases={"prior": pre}, steps=0)
    else:
        result.update(_finetune(bench, recipe, task, method, seed, prior, train, rdir, log_eval, progress, seconds))
        result["phases"] = {"prior": pre, **result["phases"]}
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = seconds
    atomic_write_text(done, json.dumps(result, indent=2, default=str))
    return result


def _finetune(bench: Benchmark, recipe: RecipeBase, task: str, method: str, seed: int, prior: Any, train: Any,
              rdir: Path, log_eval: Any, progress: bool, seconds: dict[str, float]) -> dict[str, Any]:
    """Offline phase, then (``online_steps`` > 0) the offline-to-online phase on a growing replay buffer."""
    from trqam_sdk.training.finetuner import Finetuner

    cfg = recipe.finetune_config(method, seed, str(rdir))
    t0 = time.perf_counter()
    ft = Finetuner(cfg, prior, train, on_existing="overwrite")  # a fresh run: an unfinished earlier one is replaced
    every, video = recipe.eval.every, recipe.eval.video
    to_jsonl = log_eval

    def log_eval(step: int, res: dict[str, float], phase: str) -> None:  # evals.jsonl, and eval/… to TensorBoard
        to_jsonl(step, res, phase)
        ft.log_to_trackers({f"eval/{k}": float(v) for k, v in res.items()}, step)

    def evaluate(desc: str) -> dict[str, float]:
        return evaluate_policy(bench, recipe, task, ft.agent.make_actor(seed), seed, progress, desc)

    def periodic(step: int) -> None:
        if every and step and step % every == 0:
            log_eval(step, evaluate(f"eval {method} step {step}"), "offline" if step <= recipe.offline_steps
                     else "online")

    final = ft.train(steps=recipe.offline_steps, progress=progress, before_step=periodic)
    seconds["train"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    offline = evaluate(f"eval {method}")
    seconds["eval"] = time.perf_counter() - t1
    log_eval(ft.step, offline, "offline")
    phases, last = {"offline": offline}, offline
    out: dict[str, Any] = {"offline_success": offline["success_rate"]}
    if recipe.online_steps:
        from trqam_sdk.data.replay import ReplayBuffer
        from trqam_sdk.rollout.online import OnlineCollector

        buffer = ReplayBuffer(train, recipe.horizon, recipe.online_steps)
        ft.sampler = buffer  # uniform over offline + online rows from here on
        env = bench.env_factory(recipe, task, "online")()
        collector = OnlineCollector(env, ft.agent.make_actor(seed), buffer, seed=seed + 77)

        def online(step: int) -> None:
            collector.step(step)
            periodic(step)

        t2 = time.perf_counter()
        final = ft.train(steps=recipe.online_steps, progress=progress, before_step=online)
        env.close()
        seconds["online"] = time.perf_counter() - t2
        last = phases["online"] = evaluate(f"eval {method} online")
        log_eval(ft.step, last, "online")
        out.update(online_success=last["success_rate"], online_episodes=collector.episodes,
                   online_train_successes=collector.successes, online_rows=buffer.online_size)
    if video:
        from trqam_sdk.rollout.video import record_episode

        out["video"] = str(record_episode(ft.agent.make_actor(),
                                          bench.env_factory(recipe, task, "video"), rdir / "video.mp4", seed))
    out.update(headline(last), phases=phases, steps=ft.step, final_metrics=final)
    if getattr(ft.agent, "lam", None) is not None:
        sched = cfg.trust_region.kl_budget_schedule
        out.update(kl_ema=float(ft.agent.kl_ema), lam=float(ft.agent.lam),
                   kl_budget=sched[-1][1] if sched else cfg.trust_region.kl_budget)
    ft.save_policy(rdir / "policy")
    bench.save_policy_extras(recipe, task, rdir / "policy")
    ft.end()
    return out
