"""The MetaWorld env every stage shares: LeRobot's env with the SDK's size, fast rendering and time limit, and
its LeRobot config ``trqam_metaworld`` as lerobot-eval parses and builds it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import metaworld  # noqa: F401  (installed by make setup: the tests fail, not skip, without it)
import mujoco
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from trqam_sdk.benchmarks.metaworld.env import (  # noqa: E402
    FAST_RENDER_FLAGS,
    EnvFactory,
    EnvSettings,
    TrqamMetaworldEnv,
    expert_policy,
    state_vector,
)


@pytest.fixture
def make_env():
    built = []

    def make(**kw) -> TrqamMetaworldEnv:
        env = TrqamMetaworldEnv(EnvSettings(**{"task": "push-v3", "image_size": 32, **kw}))
        built.append(env)
        return env

    yield make
    for env in built:
        env.close()


def test_settings_validate_and_round_trip():
    with pytest.raises(ValueError, match="reach-v3"):  # a v2 name: the error lists the close v3 name
        EnvSettings("reach-v2")
    with pytest.raises(ValueError, match="episode_length"):
        EnvSettings("reach-v3", episode_length=501)  # MetaWorld's inner env refuses step 501
    with pytest.raises(ValueError, match="image_size"):
        EnvSettings("reach-v3", image_size=0)
    s = EnvSettings("drawer-open-v3", image_size=48, episode_length=90, fast_render=False)
    assert EnvSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="imagesize"):
        EnvSettings.from_dict({"task": "reach-v3", "imagesize": 64})


def test_renders_requested_size_deterministically(make_env):
    a, b = make_env(), make_env()
    obs_a, info = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    c = b
    state_b = state_vector(b)
    obs_c, _ = c.reset(seed=8)
    assert obs_a["pixels"].shape == (32, 32, 3) and obs_a["pixels"].dtype == np.uint8
    assert a.observation_space["pixels"].shape == (32, 32, 3)
    assert obs_a["agent_pos"].shape == (4,)
    assert info["success"] == 0.0 and info["is_success"] is False
    np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
    np.testing.assert_array_equal(obs_a["agent_pos"], obs_b["agent_pos"])
    np.testing.assert_array_equal(state_vector(a), state_b)
    assert not np.array_equal(state_vector(a), state_vector(c))  # the seed moves the puck / goal
    assert not np.array_equal(obs_a["pixels"], obs_c["pixels"])  # ... and the image shows it
    np.testing.assert_array_equal(a.render(), obs_a["pixels"])  # observation image == a render of the state
    b.step(np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(b.reset(seed=7)[0]["pixels"], obs_a["pixels"])  # a used env re-seeds exactly
    assert state_vector(a).shape == (39,)
    np.testing.assert_array_equal(state_vector(a)[:4], obs_a["agent_pos"])  # agent_pos is the raw obs' head


def test_fast_render_settings_reach_the_renderer(make_env):
    fast, shipped = make_env(fast_render=True), make_env(fast_render=False)
    fast_img = fast.reset(seed=1)[0]["pixels"]
    shipped_img = shipped.reset(seed=1)[0]["pixels"]
    viewer = fast._env.mujoco_renderer._get_viewer("rgb_array")
    assert fast._env.model.vis.quality.shadowsize == 0 and fast._env.model.vis.quality.offsamples == 0
    assert all(viewer.scn.flags[f] == 0 for f in FAST_RENDER_FLAGS)
    sviewer = shipped._env.mujoco_renderer._get_viewer("rgb_array")
    assert shipped._env.model.vis.quality.shadowsize > 0
    assert sviewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 1
    assert shipped_img.shape == fast_img.shape == (32, 32, 3)
    assert not np.array_equal(fast_img, shipped_img)


def test_time_limit_truncates_and_success_is_float(make_env):
    env = make_env(episode_length=5)
    assert env._max_episode_steps == 5  # what lerobot-eval reads
    env.reset(seed=0)
    flags = []
    for _ in range(5):
        _, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert isinstance(reward, float) and isinstance(info["success"], float)
        flags.append((terminated, truncated))
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_success_terminates_with_the_pre_reset_observation(make_env):
    env = make_env(task="reach-v3", episode_length=200)
    policy = expert_policy("reach-v3")
    env.reset(seed=3)
    terminated = truncated = False
    while not (terminated or truncated):
        goal = state_vector(env)[-3:]
        obs, _, terminated, truncated, info = env.step(np.clip(policy.get_action(state_vector(env)), -1, 1))
    assert terminated and not truncated, "the noiseless expert should reach the goal within 200 steps"
    assert info["success"] == 1.0 and info["is_success"] and info["final_info"]["is_success"]
    # the returned observation is the terminal one (hand at the goal), not the state after LeRobot's reset
    assert np.linalg.norm(obs["agent_pos"][:3] - goal) < 0.05
    after_reset = state_vector(env)
    assert np.linalg.norm(after_reset[:3] - goal) > 0.05
    assert env.elapsed_steps == 0  # LeRobot reset the episode internally: the time limit restarts too
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        *_, terminated, truncated, _ = env.step(np.zeros(4, dtype=np.float32))
        steps += 1
    assert (steps, truncated) == (200, True), f"the next episode must be truncated after 200 steps, got {steps}"


def test_factory_is_picklable_and_builds_the_same_env(make_env):
    settings = EnvSettings("push-v3", image_size=32, episode_length=30)
    factory = pickle.loads(pickle.dumps(EnvFactory(settings)))
    env = factory()
    try:
        assert isinstance(env, TrqamMetaworldEnv) and env.settings == settings
        direct = make_env(episode_length=30)
        np.testing.assert_array_equal(env.reset(seed=4)[0]["pixels"], direct.reset(seed=4)[0]["pixels"])
    finally:
        env.close()


LEROBOT_EVAL_PARSE = r"""
import json, sys
from lerobot.configs import parser
from lerobot.configs.eval import EvalPipelineConfig
from lerobot.envs.factory import make_env
from lerobot.envs.utils import env_to_policy_features, preprocess_observation
sys.argv = ["lerobot-eval", "--env.type=trqam_metaworld", "--env.task=drawer-open-v3", "--env.image_size=24",
            "--env.episode_length=33", "--env.fast_render=false",
            "--env.discover_packages_path=trqam_sdk.benchmarks.metaworld.lerobot_plugin", "--output_dir=" + sys.argv[1]]

@parser.wrap()
def main(cfg: EvalPipelineConfig):
    return cfg

cfg = main()
from trqam_sdk.benchmarks.metaworld.lerobot_env import (env_config_from_settings, lerobot_env_args,
                                                        settings_from_env_config)
envs = make_env(cfg.env, n_envs=2)
vec = envs["drawer-open-v3"][0]
obs, info = vec.reset(seed=[0, 1])
batch = preprocess_observation(obs)
settings = settings_from_env_config(cfg.env)
print(json.dumps({
    "config": type(cfg.env).__name__, "groups": {g: list(t) for g, t in envs.items()},
    "env": [type(e.unwrapped).__name__ for e in vec.envs],
    "settings": [e.unwrapped.settings.to_dict() for e in vec.envs],
    "max_steps": list(vec.call("_max_episode_steps")), "task_description": list(vec.call("task_description")),
    "image": list(batch["observation.image"].shape), "state": list(batch["observation.state"].shape),
    "features": {k: list(v.shape) for k, v in env_to_policy_features(cfg.env).items()},
    "round_trip": settings_from_env_config(env_config_from_settings(settings)) == settings,
    "args": lerobot_env_args(settings),
}))
vec.close()
"""


def test_lerobot_eval_parses_the_plugin_and_builds_the_sdk_env(tmp_path):
    """In a fresh process, as lerobot-eval does: the plugin package is imported from the CLI flag alone."""
    out = subprocess.run([sys.executable, "-c", LEROBOT_EVAL_PARSE, str(tmp_path / "eval")], capture_output=True,
                         text=True, timeout=240, env={**os.environ, "MUJOCO_GL": "egl"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = {"task": "drawer-open-v3", "image_size": 24, "episode_length": 33, "fast_render": False,
            "camera": "corner2"}
    assert got["config"] == "TrqamMetaworldEnvConfig" and got["groups"] == {"drawer-open-v3": [0]}
    assert got["env"] == ["TrqamMetaworldEnv"] * 2 and got["settings"] == [want] * 2
    assert got["max_steps"] == [33, 33]
    assert got["task_description"] == ["Open a drawer"] * 2
    assert got["image"] == [2, 3, 24, 24] and got["state"] == [2, 4]
    assert got["features"] == {"action": [4], "observation.state": [4], "observation.image": [3, 24, 24]}
    assert got["round_trip"] is True
    assert "--env.image_size=24" in got["args"] and "--env.fast_render=false" in got["args"]


def test_an_unknown_camera_is_an_error_naming_the_cameras() -> None:
    """MuJoCo would render an unknown camera name from a default free camera: refuse it when the env is built."""
    env = TrqamMetaworldEnv(EnvSettings("reach-v3", image_size=16, camera="front"))
    with pytest.raises(ValueError, match="'front' is not a camera of reach-v3.*corner2"):
        env.reset(seed=0)
    env.close()
