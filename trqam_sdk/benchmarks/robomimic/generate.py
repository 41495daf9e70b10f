"""Scripted robomimic-format datasets (the MH files cannot be downloaded here).

A waypoint controller on robosuite's privileged state (end-effector and object positions) drives the
OSC_POSE arm; Gaussian noise of a per-level scale is added to every action, giving three quality levels
tagged like robomimic MH's operator groups: ``better`` / ``okay`` / ``worse``. Files follow the robomimic
hdf5 layout (``data/demo_i/{obs,next_obs,actions,rewards,dones,states}``, ``data.attrs["env_args"]`` with a
robosuite ≤ 1.4 style ``OSC_POSE`` controller config, ``mask/<filter>`` lists of demo names), so the same
loader and env builder serve real MH files. Data made here is *scripted*, never "Robomimic MH".

Implemented tasks: Lift and PickPlaceCan. Square (nut assembly) has no scripted controller yet: use real files.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trqam_sdk.benchmarks.robomimic.env import LOW_DIM_KEYS, flatten_obs, make_robosuite_env
from trqam_sdk.schema import ranged

OLD_OSC_POSE = {
    "type": "OSC_POSE", "input_max": 1, "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5], "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150, "damping": 1, "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_limits": [0, 10],
    "position_limits": None, "orientation_limits": None, "uncouple_pos_ori": True, "control_delta": True,
    "interpolation": None, "ramp_ratio": 0.2,
}
"""the controller config robomimic's robosuite-1.2/1.4 files carry (converted on load by robomimic_env)"""

TASK_ENVS = {"lift": "Lift", "can": "PickPlaceCan"}
QUALITY_NOISE = {"better": 0.05, "okay": 0.2, "worse": 0.4}
"""Gaussian action-noise std per quality tag (ENVIRONMENT.md's quick Lift trial: 10/10, 7/10, 2/10)"""


def env_args_for(task: str) -> dict[str, Any]:
    if task not in TASK_ENVS:
        raise ValueError(f"no scripted controller for task {task!r}; scripted tasks: {sorted(TASK_ENVS)}")
    kwargs = {"has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True, "use_object_obs": True,
              "use_camera_obs": False, "control_freq": 20, "controller_configs": dict(OLD_OSC_POSE),
              "robots": ["Panda"], "reward_shaping": False}
    return {"env_name": TASK_ENVS[task], "type": 1, "env_kwargs": kwargs}


class WaypointController:
    """Phases of (position target, gripper command) from privileged state; P-control on the OSC delta."""

    def __init__(self, task: str, env: Any, gain: float = 10.0, phase_timeout: int = 40):
        """A motion phase ends within ``tol`` of its target or after ``phase_timeout`` steps (e.g. fingers
        touching the bin floor before the target height); a phase with ``tol = -k`` holds for k steps."""
        self.task, self.env, self.gain, self.timeout, self.phase, self.hold = task, env, gain, phase_timeout, 0, 0

    def _target(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
        """(target position, gripper command, tolerance) for the current phase."""
        eef = obs["robot0_eef_pos"]
        if self.task == "lift":
            obj = obs["cube_pos"]
            plan = [(obj + [0, 0, 0.08], -1.0, 0.01), (obj + [0, 0, -0.005], -1.0, 0.008), (eef, 1.0, -10),
                    (obj + [0, 0, 0.2], 1.0, 0.01)]
        else:
            obj = obs["Can_pos"]
            goal = self.env.target_bin_placements[self.env.object_to_id["can"]]
            plan = [(obj + [0, 0, 0.08], -1.0, 0.01), (obj + [0, 0, 0.008], -1.0, 0.012), (eef, 1.0, -10),
                    (np.r_[eef[:2], goal[2] + 0.2], 1.0, 0.02), (np.r_[goal[:2], goal[2] + 0.2], 1.0, 0.015),
                    (np.r_[goal[:2], goal[2] + 0.1], 1.0, 0.015), (eef, -1.0, -8),
                    (np.r_[goal[:2], goal[2] + 0.25], -1.0, 0.01)]
        self.phase = min(self.phase, len(plan) - 1)
        return plan[self.phase]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        target, grip, tol = self._target(obs)
        err = target - obs["robot0_eef_pos"]
        self.hold += 1
        done = (np.linalg.norm(err) < tol or self.hold >= self.timeout) if tol > 0 else self.hold > -tol
        if done:
            self.phase, self.hold = self.phase + 1, 0
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * err, -1.0, 1.0)
        action[6] = grip
        return action


def scripted_episode(env: Any, task: str, noise: float, rng: np.random.Generator, max_steps: int,
                     obs_keys: tuple[str, ...] = LOW_DIM_KEYS) -> dict[str, Any]:
    """One episode in robomimic's per-demo layout; it ends at the first success (done = reward = 1)."""
    env.rng.bit_generator.state = np.random.default_rng(rng.integers(2**31)).bit_generator.state
    raw = env.reset()
    ctrl = WaypointController(task, env)
    rows: dict[str, list[Any]] = {"obs": [], "next_obs": [], "actions": [], "rewards": [], "dones": [], "states": []}
    success = False
    for _ in range(max_steps):
        action = np.clip(ctrl(raw) + noise * rng.standard_normal(7), -1.0, 1.0)
        rows["states"].append(env.sim.get_state().flatten())
        rows["obs"].append({k: flatten_obs(raw, [k]) for k in obs_keys})
        raw, _, _, _ = env.step(action)
        success = bool(env._check_success())
        rows["next_obs"].append({k: flatten_obs(raw, [k]) for k in obs_keys})
        rows["actions"].append(action)
        rows["rewards"].append(float(success))
        rows["dones"].append(float(success))
        if success:
            break
    rows["dones"][-1] = 1.0
    return {"rows": rows, "success": success}


@dataclass
class GenerateConfig:
    task: str = "lift"
    """lift or can (scripted); square needs the real MH file"""
    demos_per_level: dict[str, int] = field(default_factory=lambda: {"better": 30, "okay": 30, "worse": 30})
    noise: dict[str, float] = field(default_factory=lambda: dict(QUALITY_NOISE))
    max_steps: int = ranged(200, ge=1)
    """steps before a failed demo is cut (kept, with reward 0: the data is mixed quality)"""
    keep_failures: bool = True
    seed: int = ranged(0, ge=0, le=2**32 - 1)
    valid_fraction: float = ranged(0.1, ge=0, lt=1)
    """share of demos in the validation mask"""


def generate(cfg: GenerateConfig, path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write a robomimic-format hdf5 file; returns per-level success counts (also stored as attributes)."""
    import h5py
    from tqdm.auto import tqdm

    unknown = set(cfg.demos_per_level) - set(cfg.noise)
    if unknown:
        raise ValueError(f"quality levels {sorted(unknown)} have no noise scale; known: {sorted(cfg.noise)}")
    env_args = env_args_for(cfg.task)
    env = make_robosuite_env(env_args)
    rng = np.random.default_rng(cfg.seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.hdf5")
    stats: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    total, i = 0, 0
    try:  # a failed run leaves no half file behind (a kill leaves one, overwritten by the next run)
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for level, n in cfg.demos_per_level.items():
                wins, kept = 0, []
                for _ in tqdm(range(n), desc=f"{cfg.task} {level}", disable=not progress):
                    ep = scripted_episode(env, cfg.task, cfg.noise[level], rng, cfg.max_steps)
                    wins += ep["success"]
                    if not (ep["success"] or cfg.keep_failures):
                        continue
                    name = f"demo_{i}"
                    _write_demo(data.create_group(name), ep)
                    total, i = total + len(ep["rows"]["actions"]), i + 1
                    kept.append(name)
                groups[level] = kept
                stats[level] = {"demos": n, "successes": int(wins), "noise": cfg.noise[level], "kept": len(kept)}
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["scripted"] = json.dumps({"generator": "trqam_sdk.benchmarks.robomimic.generate",
                                                 "levels": stats})
            _write_masks(f, groups, cfg.valid_fraction, rng)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    env.close()
    return stats


def _write_demo(g: Any, ep: dict[str, Any]) -> None:
    rows = ep["rows"]
    for part in ("obs", "next_obs"):
        for k in rows[part][0]:
            g.create_dataset(f"{part}/{k}", data=np.stack([r[k] for r in rows[part]]))
    for k in ("actions", "rewards", "dones", "states"):
        g.create_dataset(k, data=np.asarray(rows[k]))
    g.attrs["num_samples"] = len(rows["actions"])
    g.attrs["success"] = bool(ep["success"])


def _write_masks(f: Any, groups: dict[str, list[str]], valid_fraction: float, rng: np.random.Generator) -> None:
    """robomimic filter keys: each level, each pair of levels (e.g. ``okay_better``), train / valid."""
    mask = f.create_group("mask")
    enc = lambda names: np.array(sorted(names, key=lambda s: int(s.split("_")[1])), dtype="S")  # noqa: E731
    for level, names in groups.items():
        mask.create_dataset(level, data=enc(names))
    for a, b in itertools.combinations(list(groups), 2):
        mask.create_dataset(f"{b}_{a}", data=enc(groups[a] + groups[b]))
    names = [n for ns in groups.values() for n in ns]
    valid = set(rng.permutation(names)[: int(round(valid_fraction * len(names)))].tolist())
    mask.create_dataset("train", data=enc([n for n in names if n not in valid]))
    mask.create_dataset("valid", data=enc(valid))
