"""A LeRobot VLA acting through the SDK's one episode loop: LeRobotPolicyEnv, uint8 images end to end.

A fake LeRobot-style env (MetaWorld's observation dict: ``pixels`` (S, S, 3) uint8 + ``agent_pos`` (4,) float64,
``info["success"]``) stands in for MetaWorld. The checkpoint is a tiny random SmolVLA whose processors carry the
statistics of a LeRobotDataset written from the same env, so the online rows, the offline rows and the
action (un)normalisation can be compared exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from trqam_sdk.adapters.lerobot import LeRobotPI05Policy, LeRobotSmolVLAPolicy

from trqam_sdk.integrations.lerobot.data import lerobot_transitions
from trqam_sdk.integrations.lerobot.policy_env import LeRobotPolicyEnv, PolicyEnvFactory, load_processors
from trqam_sdk.methods.base import FlowActor
from trqam_sdk.networks.encoders import unit_image, vla_critic
from trqam_sdk.rollout.episode import ChunkStepper, batch_of_one, run_episode
from trqam_sdk.rollout.evaluation import evaluate
from trqam_sdk.testing.tiny_lerobot import build_tiny_lerobot

S, A, CHUNK, TASK, IMAGE = 32, 4, 8, "push the block left", "observation.image"


class FakeLeRobotEnv(gym.Env):
    """MetaWorld-like: the hand moves by 0.1·a, the image shows where it is; success near the origin."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, image_size: int = S, episode_length: int = 10, pixels: bool = True):
        self.size, self.episode_length, self.pixels = image_size, episode_length, pixels
        spaces = {"agent_pos": gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)}
        if pixels:
            spaces["pixels"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (A,), np.float32)
        self.task_description = TASK
        self.actions: list[np.ndarray] = []

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"agent_pos": self.pos.copy()}
        if self.pixels:
            obs["pixels"] = self.render()
        return obs

    def render(self) -> np.ndarray:
        ramp = np.linspace(0.0, 1.0, self.size)[None, :, None]
        img = self.texture + 90.0 * np.tanh(self.pos[None, None, :3]) * ramp
        return np.clip(img, 0, 255).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 4)
        self.texture = self.np_random.integers(40, 200, (self.size, self.size, 3)).astype(np.float64)
        self.t = 0
        return self._obs(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.actions.append(np.array(action, copy=True))
        self.pos[:3] += 0.1 * np.asarray(action[:3], dtype=np.float64)
        self.pos[3] = float(action[3])
        self.t += 1
        dist = float(np.linalg.norm(self.pos[:3]))
        success = dist < 0.3
        return self._obs(), -dist, success, self.t >= self.episode_length, {"success": float(success),
                                                                           "is_success": success}


@dataclass(frozen=True)
class FakeEnvFactory:
    image_size: int = S
    pixels: bool = True

    def __call__(self) -> FakeLeRobotEnv:
        return FakeLeRobotEnv(self.image_size, pixels=self.pixels)


@dataclass
class Setup:
    adapter: LeRobotSmolVLAPolicy
    checkpoint: Path
    data: Any
    """Transitions of the dataset"""
    frames: list[dict[str, np.ndarray]]
    """the raw env observations the dataset frames were written from"""
    raw_actions: np.ndarray
    stats: dict


def _write_dataset(root: Path) -> tuple[Any, list[dict[str, np.ndarray]], np.ndarray]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    vec = {"dtype": "float32", "shape": (4,), "names": None}
    features = {IMAGE: {"dtype": "image", "shape": (S, S, 3), "names": ["height", "width", "channel"]},
                "observation.state": vec, "action": dict(vec),
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
    ds = LeRobotDataset.create("local/fake-metaworld", 10, features, root=str(root), use_videos=False)
    env, rng, frames, actions = FakeLeRobotEnv(), np.random.default_rng(0), [], []
    for e in range(2):
        obs, _ = env.reset(seed=e)
        for _ in range(5):
            a = rng.uniform(-0.8, 0.6, A).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            frames.append(obs)
            actions.append(a)
            ds.add_frame({IMAGE: obs["pixels"], "observation.state": obs["agent_pos"].astype(np.float32),
                          "action": a, "next.reward": np.array([r], np.float32), "next.done": np.array([term]),
                          "task": TASK})
            obs = nxt
        ds.save_episode()
    ds.finalize()
    return LeRobotDataset("local/fake-metaworld", root=str(root)), frames, np.stack(actions)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Setup:
    from lerobot.policies.factory import make_pre_post_processors

    root = tmp_path_factory.mktemp("vla_acting")
    ds, frames, actions = _write_dataset(root / "data")
    policy, _, _ = build_tiny_lerobot("smolvla", root / "model", chunk_size=CHUNK, state_dim=4, action_dim=A,
                                      image_size=S, image_key=IMAGE)
    pre, post = make_pre_post_processors(policy.config, dataset_stats=ds.meta.stats)  # the data's own stats
    adapter = LeRobotSmolVLAPolicy(policy, pre, post)
    with torch.no_grad():  # random init has tiny output layers: make the field (and the chunks) non-trivial
        adapter.policy.model.action_out_proj.weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(1))
    checkpoint = adapter.save_pretrained(root / "checkpoint")
    return Setup(adapter, checkpoint, lerobot_transitions(ds, pre), frames, actions, ds.meta.stats)


def test_observation_equals_the_dataset_row(setup: Setup) -> None:
    env = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint))()  # processors reloaded from the folder
    obs = setup.data.observations
    assert obs[IMAGE].dtype == torch.uint8 and obs[IMAGE].shape == (10, 3, S, S)
    for i, raw in enumerate(setup.frames):
        row = env.observe(raw)
        assert sorted(row) == sorted(obs)
        for key, value in row.items():
            assert value.dtype == obs[key].numpy().dtype, key
            assert np.array_equal(value, obs[key][i].numpy()), (i, key)
        assert np.array_equal(row[IMAGE], raw["pixels"].transpose(2, 0, 1))  # exact: round(255 · k/255) = k
    assert not np.array_equal(env.observe(setup.frames[0])[IMAGE], env.observe(setup.frames[1])[IMAGE])
    # next_observations: the next frame inside an episode, the frame itself at the episode's end
    assert torch.equal(setup.data.next_observations[IMAGE][0], obs[IMAGE][1])
    assert torch.equal(setup.data.next_observations[IMAGE][4], obs[IMAGE][4])
    reset_row, _ = env.reset(seed=3)
    assert env.observation_space.contains(reset_row)


def test_token_length_pads_like_the_dataset(setup: Setup) -> None:
    """SmolVLA tokenises to the longest prompt; online rows are padded to the buffer's width with 0 / False, as
    lerobot_transitions pads a dataset's batches, and the padding does not change the model's velocity."""
    tokens, mask = "observation.language.tokens", "observation.language.attention_mask"
    width = setup.data.observations[tokens].shape[1]
    plain = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint))().observe(setup.frames[0])
    padded = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint), token_length=width + 3)().observe(
        setup.frames[0])
    assert padded[tokens].shape == (width + 3,) and np.array_equal(padded[tokens][:width], plain[tokens])
    assert not padded[tokens][width:].any() and not padded[mask][width:].any()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, CHUNK * A, generator=g), torch.rand(1, generator=g)
    v = [setup.adapter.velocity(setup.adapter.condition(batch_of_one(r)), x, t) for r in (plain, padded)]
    assert torch.allclose(v[0], v[1], atol=1e-5)
    with pytest.raises(ValueError, match="tokens do not fit"):
        PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint), token_length=width - 1)()


def test_actions_unnormalise_through_the_postprocessor(setup: Setup) -> None:
    env = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint))()
    lo, hi = (np.asarray(setup.stats["action"][k], dtype=np.float32) for k in ("min", "max"))
    assert np.allclose(env.unnormalize(-np.ones(A)), lo, atol=1e-6)  # MIN_MAX: −1 ↦ the data's min
    assert np.allclose(env.unnormalize(np.ones(A)), hi, atol=1e-6)  # +1 ↦ the data's max
    a = np.random.default_rng(1).uniform(-1, 1, (6, A)).astype(np.float32)
    want = setup.adapter.postprocessor(torch.as_tensor(a)).numpy()
    assert np.array_equal(env.unnormalize(a), want)
    assert np.allclose(want, (a + 1) / 2 * (hi - lo) + lo, atol=1e-6)
    # round trip: the dataset's normalised actions unnormalise to the recorded env actions
    assert float(setup.data.actions.min()) == -1.0 and float(setup.data.actions.max()) == 1.0
    assert np.allclose(env.unnormalize(setup.data.actions.numpy()), setup.raw_actions, atol=1e-6)
    # the inner env receives the unnormalised action
    env.reset(seed=0)
    env.step(a[0])
    assert np.array_equal(env.unwrapped.actions[-1], want[0])
    with pytest.raises(ValueError, match=r"action: expected shape \(4,\)"):
        env.step(np.zeros(A + 1))


def test_stepper_gives_dict_obs_as_a_batch_of_one(setup: Setup) -> None:
    env = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint))()
    seen: list[dict] = []

    def act(obs: dict) -> torch.Tensor:
        seen.append(obs)
        return torch.full((1, 3, A), 0.5)

    stepper = ChunkStepper(env, act)
    first = stepper.reset(seed=0)
    steps = [stepper.step() for _ in range(4)]
    assert len(seen) == 2  # a chunk of 3: asked at step 0 and 3
    assert seen[0][IMAGE].dtype == torch.uint8 and seen[0][IMAGE].shape == (1, 3, S, S)
    assert seen[0]["observation.language.tokens"].dtype == torch.long
    assert seen[0]["observation.language.attention_mask"].dtype == torch.bool
    assert seen[0]["observation.state"].dtype == torch.float32
    assert steps[0].obs is first and steps[1].obs is steps[0].next_obs  # rows kept as the env gave them
    assert np.array_equal(seen[1][IMAGE][0].numpy(), steps[3].obs[IMAGE])
    assert np.array_equal(env.unwrapped.actions[0], env.unnormalize(np.full(A, 0.5)))
    vec = batch_of_one(np.arange(3, dtype=np.float64))  # the tensor path is unchanged: (1, O) float32
    assert vec.dtype == torch.float32 and vec.shape == (1, 3)


def test_evaluate_a_tiny_smolvla_in_and_out_of_process(setup: Setup) -> None:
    actor = FlowActor(setup.adapter, flow_steps=2)
    factory = PolicyEnvFactory(FakeEnvFactory(), str(setup.checkpoint))
    one = evaluate(actor, factory, episodes=2, seed=0, workers=1)
    two = evaluate(actor, factory, episodes=2, seed=0, workers=2)  # spawn pool: factory + actor pickled
    assert one == two
    assert one["episodes"] == 2.0 and 1.0 <= one["mean_length"] <= 10.0 and one["mean_return"] < 0
    # the executed actions are the policy's chunk, clipped and unnormalised
    env = factory()
    actor.reseed(0)
    chunk = actor(batch_of_one(env.reset(seed=0)[0]))
    assert chunk.shape == (1, CHUNK, A) and float(chunk.std()) > 1e-3
    env.unwrapped.actions.clear()
    result = run_episode(env, actor, seed=0)
    taken = np.stack(env.unwrapped.actions[:CHUNK])
    assert np.allclose(taken, env.unnormalize(chunk[0].numpy()[: len(taken)]), atol=1e-6)
    assert result["length"] == len(env.unwrapped.actions)


def test_a_worker_that_cannot_build_its_env_raises_instead_of_hanging(setup: Setup) -> None:
    """A pool whose initializer raises is respawned forever; evaluate's workers keep the error for the caller
    (checked in-process: a spawn pool costs ~10 s here)."""
    import pickle

    from trqam_sdk.rollout import evaluation

    bad = PolicyEnvFactory(FakeEnvFactory(image_size=16), str(setup.checkpoint))
    try:
        evaluation._init_worker(pickle.dumps((bad, FlowActor(setup.adapter, 2))))
        with pytest.raises(ValueError, match="'observation.image'"):
            evaluation._worker_episode(0)
    finally:
        evaluation._WORKER.clear()


def _rows(adapter: Any, pre: Any, seed: int) -> tuple[dict, dict]:
    """The same pre-processed frame with uint8 and with float images."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (2, 3, S, S), dtype=torch.uint8, generator=g)
    raw = {IMAGE: u8.float() / 255, "observation.state": torch.randn(2, 4, generator=g), "task": [TASK, "pick"]}
    out = {k: v for k, v in pre(raw).items() if k.startswith("observation.") and torch.is_tensor(v)}
    return out, {**out, IMAGE: u8}


@pytest.mark.parametrize("kind", ["smolvla", "pi05"])
def test_uint8_and_float_images_condition_identically(setup: Setup, kind: str, tmp_path: Path) -> None:
    if kind == "smolvla":
        adapter, pre = setup.adapter, setup.adapter.preprocessor
    else:
        policy, pre, post = build_tiny_lerobot("pi05", tmp_path, chunk_size=CHUNK, action_dim=A, image_size=S,
                                               image_key=IMAGE)
        adapter = LeRobotPI05Policy(policy, pre, post)
    flt, u8 = _rows(adapter, pre, 0)
    assert torch.equal(unit_image(u8[IMAGE]), flt[IMAGE])
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, CHUNK * A, generator=g), torch.rand(2, generator=g)
    v_float = adapter.velocity(adapter.condition(flt), x, t)
    v_u8 = adapter.velocity(adapter.condition(u8), x, t)
    assert torch.equal(v_float, v_u8)
    other = _rows(adapter, pre, 1)[1]
    assert not torch.allclose(adapter.velocity(adapter.condition({**u8, IMAGE: other[IMAGE]}), x, t), v_u8)
    critic = vla_critic(adapter)
    chunk = torch.rand(2, CHUNK * A, generator=g) * 2 - 1
    assert torch.equal(critic(flt, chunk), critic(u8, chunk))
    assert not torch.allclose(critic({**u8, IMAGE: other[IMAGE]}, chunk), critic(u8, chunk))
    with pytest.raises(ValueError, match="uint8 or float"):
        adapter.condition({**u8, IMAGE: u8[IMAGE].to(torch.int32)})


def test_errors_name_the_problem(setup: Setup) -> None:
    from lerobot.configs import FeatureType, NormalizationMode

    with pytest.raises(ValueError, match=r"'observation.image'.*\(3, 16, 16\).*\(3, 32, 32\)"):
        PolicyEnvFactory(FakeEnvFactory(image_size=16), str(setup.checkpoint))()
    with pytest.raises(ValueError, match=r"reads 'observation.image'.*agent_pos"):
        PolicyEnvFactory(FakeEnvFactory(pixels=False), str(setup.checkpoint))()
    with pytest.raises(FileNotFoundError, match="policy_preprocessor.json"):
        load_processors(setup.checkpoint / "nowhere")
    pre, post = load_processors(setup.checkpoint)
    normaliser = next(s for s in pre.steps if hasattr(s, "norm_map"))
    normaliser.norm_map = {**normaliser.norm_map, FeatureType.VISUAL: NormalizationMode.MEAN_STD}
    with pytest.raises(ValueError, match="VISUAL IDENTITY"):
        LeRobotPolicyEnv(FakeLeRobotEnv(), pre, post)
    anonymous = FakeLeRobotEnv()
    del anonymous.task_description
    with pytest.raises(ValueError, match="task string"):
        LeRobotPolicyEnv(anonymous, *load_processors(setup.checkpoint))
    normaliser._tensor_stats = {**normaliser._tensor_stats,
                                IMAGE: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}}
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/fake-metaworld", root=str(setup.checkpoint.parent / "data"))
    with pytest.raises(ValueError, match="changes 'observation.image'"):
        lerobot_transitions(ds, pre, uint8_images=True)
    floats = lerobot_transitions(ds, pre)  # auto: keeps the pre-processor's float images
    assert floats.observations[IMAGE].dtype == torch.float32
