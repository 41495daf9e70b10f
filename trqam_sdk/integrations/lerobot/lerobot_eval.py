"""Evaluate a LeRobot checkpoint with LeRobot's own ``lerobot-eval`` in the SDK's MetaWorld env, as a subprocess.

The env is the ``trqam_metaworld`` LeRobot env config (:mod:`trqam_sdk.benchmarks.metaworld.lerobot_env`), so
lerobot-eval steps exactly the env (rendering, time limit) the SDK trains and evaluates in; the policy is
loaded from the folder by lerobot itself (``--policy.path``), with its own processors.

**Seeds (read from lerobot/scripts/lerobot_eval.py, 0.6.1).** ``eval_main`` calls ``set_seed(seed)`` and
``eval_policy_all(start_seed=seed)``; every task of the config gets the same ``start_seed``; ``eval_policy``
runs ``ceil(episodes / batch_size)`` batched rollouts and resets batch ``b``'s ``batch_size`` envs with seeds
``seed + b * batch_size + j`` (one ``env.reset(seed=[...])`` per batch; the first episode after that reset is
the one scored, anything after an env's first done is masked), and keeps the first ``episodes`` results.
So episode ``i`` (per task) is the episode after ``reset(seed=seed + i)``, whatever ``batch_size`` is
(surplus envs of the last batch run with later seeds and are discarded): :func:`episode_seeds`. The policy's
own sampling noise comes from the global torch RNG seeded once, so it depends on the batch layout.

lerobot-eval also renders up to 10 episodes to mp4 under ``out_dir/videos`` (hard-coded when not recording):
one extra ``env.render()`` per step for those episodes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from trqam_sdk.integrations.lerobot.prior import lerobot_command, run_logged

ENV_ARG_KEYS = ("task", "image_size", "episode_length", "fast_render", "camera")
LOG_FILE, INFO_FILE = "lerobot-eval.log", "eval_info.json"


def episode_seeds(seed: int, episodes: int, tasks: int = 1) -> list[int]:
    """The env reset seed of every scored lerobot-eval episode, task by task (see the module docstring)."""
    return [seed + i for _ in range(tasks) for i in range(episodes)]


def lerobot_eval_args(policy_folder: Path, env_args: dict[str, str | int | bool], *, episodes: int, seed: int,
                      batch_size: int, out_dir: Path) -> list[str]:
    """The ``lerobot-eval`` arguments: the policy folder on the CPU, the ``trqam_metaworld`` env built from
    ``env_args`` (validated by :class:`~trqam_sdk.benchmarks.metaworld.env.EnvSettings`), sync envs."""
    from trqam_sdk.benchmarks.metaworld.env import EnvSettings
    from trqam_sdk.benchmarks.metaworld.lerobot_env import lerobot_env_args

    unknown = sorted(set(env_args) - set(ENV_ARG_KEYS))
    if unknown or "task" not in env_args:
        raise KeyError(f"env_args must hold 'task' and only {ENV_ARG_KEYS}; got {sorted(env_args)}"
                       + (f" (unknown: {unknown})" if unknown else ""))
    settings = EnvSettings(**env_args)  # type: ignore[arg-type]
    return [f"--policy.path={Path(policy_folder).resolve()}", "--policy.device=cpu", *lerobot_env_args(settings),
            f"--eval.n_episodes={episodes}", f"--eval.batch_size={batch_size}", "--eval.use_async_envs=false",
            f"--seed={seed}", f"--output_dir={Path(out_dir).resolve()}"]


def parse_eval_info(info: dict[str, Any], seed: int, episodes: int, source: str = INFO_FILE) -> dict[str, Any]:
    """Per-episode successes and returns out of lerobot-eval's ``eval_info.json`` (all tasks, in order)."""
    from trqam_sdk.rollout.stats import wilson_interval

    try:
        per_task = [t["metrics"] for t in info["per_task"]]
        successes = [bool(s) for m in per_task for s in m["successes"]]
        returns = [float(r) for m in per_task for r in m["sum_rewards"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: not a lerobot-eval eval_info.json (missing {e})") from e
    n = len(successes)
    if n != episodes * len(per_task) or len(returns) != n:
        raise ValueError(f"{source}: {n} episode successes / {len(returns)} returns for {len(per_task)} task(s) "
                         f"x {episodes} episodes")
    lo, hi = wilson_interval(sum(successes), n)
    return {"success_rate": sum(successes) / n, "successes": sum(successes), "episodes": n, "ci95_low": lo,
            "ci95_high": hi, "mean_return": sum(returns) / n if n else math.nan,
            "seeds": episode_seeds(seed, episodes, len(per_task)), "per_episode_success": successes,
            "per_episode_return": returns}


def run_lerobot_eval(policy_folder: Path, env_args: dict[str, str | int | bool], *, episodes: int, seed: int,
                     batch_size: int = 1, out_dir: Path, tiny_pi: bool = False, progress: bool = True
                     ) -> dict[str, Any]:
    """Run ``lerobot-eval`` on ``policy_folder`` for ``episodes`` episodes of the ``trqam_metaworld`` env
    (``env_args``: task, image_size, episode_length, fast_render) and return its success rate, Wilson 95 %
    interval, mean return, the env seeds of the episodes (:func:`episode_seeds`), the wall seconds and the path
    of its ``eval_info.json``. ``tiny_pi`` runs it inside ``tiny_pi_architecture`` (tiny pi0 / pi0.5)."""
    policy_folder, out_dir = Path(policy_folder), Path(out_dir)
    if not (policy_folder / "config.json").is_file():
        raise FileNotFoundError(f"{policy_folder} has no config.json: not a LeRobot checkpoint folder")
    for name, value in (("episodes", episodes), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    args = lerobot_eval_args(policy_folder, env_args, episodes=episodes, seed=seed, batch_size=batch_size,
                             out_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / INFO_FILE
    info_path.unlink(missing_ok=True)  # never report a previous run's numbers
    start = time.perf_counter()
    run_logged(lerobot_command("eval", args, tiny_pi=tiny_pi), out_dir / LOG_FILE, progress, what="lerobot-eval")
    seconds = time.perf_counter() - start
    if not info_path.is_file():
        raise RuntimeError(f"lerobot-eval exited cleanly but wrote no {info_path} (see {out_dir / LOG_FILE})")
    result = parse_eval_info(json.loads(info_path.read_text()), seed, episodes, str(info_path))
    return {**result, "seconds": seconds, "eval_info": str(info_path)}
