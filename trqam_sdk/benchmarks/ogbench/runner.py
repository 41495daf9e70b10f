"""Run one (domain, task, method, seed) of a recipe: data → BC prior → offline → online → evaluation.

Layout under ``out``: ``<domain>/task<k>/bc_prior/seed<s>/`` (the prior, shared by every method of that
seed, so methods are compared from the same start and on the same evaluation seeds) and
``<domain>/task<k>/<method>/seed<s>/`` with ``result.json`` (written last, atomically: its presence means
the run finished, which is how sweeps resume), ``evals.jsonl`` (success over steps), ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.benchmarks.recipes import Recipe
from trqam_sdk.io import atomic_write_text

_DATA_CACHE: dict[tuple, tuple[Any, Any]] = {}


def load_data(recipe: Recipe, task: int) -> tuple[Any, Any]:
    """(train Transitions, dataset folder) for the recipe's data; regenerates play data when asked."""
    from trqam_sdk.benchmarks.ogbench.official import load_singletask

    d = recipe.data
    key = (recipe.domain, task, d.source, d.dataset, d.dataset_dir, d.num_files, d.reward, d.episodes,
           d.episode_length, d.seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    folder = d.dataset_dir
    if d.source == "regenerate":
        from trqam_sdk.benchmarks.ogbench.generate import generate_dataset

        task_name = f"{recipe.domain}-play-singletask-task{task}-v0"
        folder = str(generate_dataset(task_name, episodes=d.episodes, seed=d.seed, dataset_dir=d.dataset_dir,
                                      workers=d.workers or None, episode_length=d.episode_length, progress=False))
    if not d.dataset:
        raise ValueError(f"recipe {recipe.domain}: data.dataset (the file stem) is empty")
    env, train, _ = load_singletask(recipe.domain, task, d.dataset, folder, d.num_files, d.reward)
    env.close()
    _DATA_CACHE[key] = (train, folder)
    return train, folder


def run_dir(out: str | Path, domain: str, task: int, method: str, seed: int) -> Path:
    return Path(out) / domain / f"task{task}" / method / f"seed{seed}"


def _evaluate(recipe: Recipe, task: int, policy: Any, seed: int, video: Path | None = None) -> dict[str, float]:
    from trqam_sdk.benchmarks.ogbench.official import eval_env_name
    from trqam_sdk.rollout.evaluation import FlowActor, evaluate

    e = recipe.eval
    kwargs = {"max_episode_steps": e.max_steps} if e.max_steps else {}
    actor = FlowActor(policy, recipe.finetune.flow_steps)
    res = evaluate(actor, eval_env_name(recipe.domain, task), e.episodes, seed=seed, workers=e.workers or None,
                   env_kwargs=kwargs)
    if video is not None:
        from trqam_sdk.rollout.video import record_episode

        res["video"] = str(record_episode(actor, eval_env_name(recipe.domain, task), video, seed, kwargs))
    return res


def run_one(recipe: Recipe, task: int, method: str, seed: int, out: str | Path = "runs/ogbench",
            profile: str = "", progress: bool = False) -> dict[str, Any]:
    """One run; returns (and writes) its result. A finished run (``result.json`` present) is not redone."""
    out = Path(out)
    rdir = run_dir(out, recipe.domain, task, method, seed)
    done = rdir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    train, folder = load_data(recipe, task)
    prior = recipe.bc_prior(train, seed, run_dir(out, recipe.domain, task, "bc_prior", seed), progress)
    rdir.mkdir(parents=True, exist_ok=True)
    evals = rdir / "evals.jsonl"
    evals.unlink(missing_ok=True)
    video = rdir / "video.mp4" if recipe.eval.video else None
    result: dict[str, Any] = {"domain": recipe.domain, "task": task, "method": method, "seed": seed,
                              "profile": profile, "data": {"folder": folder, "transitions": len(train)},
                              "eval_episodes": recipe.eval.episodes}

    def log_eval(step: int, res: dict[str, float], phase: str) -> None:
        with open(evals, "a") as f:
            f.write(json.dumps({"step": step, "phase": phase, **res}) + "\n")

    if method == "bc":
        res = _evaluate(recipe, task, prior, seed, video)
        log_eval(0, res, "offline")
        result.update(success=res["success_rate"], steps=0)
    else:
        result.update(_finetune(recipe, task, method, seed, prior, train, rdir, log_eval, video, progress))
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(done, json.dumps(result, indent=2, default=str))
    return result


def _finetune(recipe: Recipe, task: int, method: str, seed: int, prior: Any, train: Any, rdir: Path,
              log_eval: Any, video: Path | None, progress: bool) -> dict[str, Any]:
    """Offline phase, then (``online_steps`` > 0) the offline-to-online phase on a growing replay buffer."""
    from trqam_sdk.benchmarks.ogbench.official import eval_env_name
    from trqam_sdk.training.finetuner import Finetuner

    cfg = recipe.finetune_config(method, seed, str(rdir))
    (rdir / "metrics.jsonl").unlink(missing_ok=True)
    ft = Finetuner(cfg, prior, train)
    every = recipe.eval.every

    def periodic(step: int) -> None:
        if every and step and step % every == 0:
            phase = "offline" if step <= recipe.offline_steps else "online"
            log_eval(step, _evaluate(recipe, task, ft.agent.actor, seed), phase)

    ft.train(steps=recipe.offline_steps, progress=progress, before_step=periodic)
    offline = _evaluate(recipe, task, ft.agent.actor, seed, video if not recipe.online_steps else None)
    log_eval(ft.step, offline, "offline")
    out: dict[str, Any] = {"offline_success": offline["success_rate"], "success": offline["success_rate"],
                           "steps": ft.step}
    if recipe.online_steps:
        import gymnasium
        import ogbench  # noqa: F401

        from trqam_sdk.data.replay import OnlineCollector, ReplayBuffer
        from trqam_sdk.rollout.evaluation import FlowActor

        buffer = ReplayBuffer(train, recipe.horizon, recipe.online_steps)
        ft.sampler = buffer  # uniform over offline + online rows from here on
        env = gymnasium.make(eval_env_name(recipe.domain, task))
        collector = OnlineCollector(env, FlowActor(ft.agent.actor, cfg.flow_steps, seed), buffer,
                                    seed=seed + 77, sparse=recipe.data.reward == "sparse")

        def online(step: int) -> None:
            collector.step(step)
            periodic(step)

        ft.train(steps=recipe.online_steps, progress=progress, before_step=online)
        env.close()
        final = _evaluate(recipe, task, ft.agent.actor, seed, video)
        log_eval(ft.step, final, "online")
        out.update(success=final["success_rate"], online_success=final["success_rate"], steps=ft.step,
                   online_episodes=collector.episodes, online_train_successes=collector.successes,
                   online_rows=buffer.online_size)
    out.update(kl_ema=float(ft.agent.kl_ema), lam=float(ft.agent.lam),
               kl_budget=cfg.trust_region.kl_budget_schedule[-1][1] if cfg.trust_region.kl_budget_schedule
               else cfg.trust_region.kl_budget)
    ft.save_policy(rdir / "policy")
    ft.end()
    return out


def add_arguments(parser: Any) -> None:
    """Options of `trqam run`: one (domain, task, method, seed) of a recipe."""
    a = parser.add_argument
    a("--recipe", required=True, help="domain name (recipes/ogbench/<name>.yaml) or a YAML path")
    a("--profile", default="cpu-small", help="recipe profile: paper or cpu-small")
    a("--task", type=int, default=None, help="task 1..5 (default: the recipe's first)")
    a("--method", default="trqam", help="bc, qam, qam_ext_kl or trqam")
    a("--seed", type=int, default=None, help="default: the recipe's first seed")
    a("--out", default="runs/ogbench", help="results root")
    a("--set", nargs="*", default=[], help="overrides, e.g. offline_steps=100 finetune.batch_size=64")
    a("--progress", action="store_true", help="tqdm bars")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: Any) -> int:
    from trqam_sdk.benchmarks.recipes import load_recipe, parse_sets

    recipe = load_recipe(args.recipe, args.profile, parse_sets(args.set))
    task = recipe.tasks[0] if args.task is None else args.task
    seed = recipe.seeds[0] if args.seed is None else args.seed
    res = run_one(recipe, task, args.method, seed, args.out, args.profile, args.progress)
    print(f"RESULT {recipe.domain} task{task} {args.method} seed {seed}: success {100 * res['success']:.1f}%"
          + (f"  kl_ema {res['kl_ema']:.4f} (ε {res['kl_budget']})  λ {res['lam']:.4f}" if "kl_ema" in res else ""))
    return 0
