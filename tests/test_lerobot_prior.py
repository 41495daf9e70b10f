"""The prior trained by LeRobot's own lerobot-train, and LeRobot's own lerobot-eval, driven from Python.

A tiny SmolVLA trains for a handful of steps on a tiny LeRobotDataset with the MetaWorld pipeline's features;
the checkpoint is then checked the way the SDK uses it (from_pretrained, MIN_MAX-normalised actions against the
dataset's own statistics), along with caching, spec refusal, crash-resume and lerobot-eval's seed rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trqam_sdk.integrations.lerobot import prior as P
from trqam_sdk.integrations.lerobot.lerobot_eval import episode_seeds, run_lerobot_eval
from trqam_sdk.integrations.lerobot.prior import train_prior
from trqam_sdk.rollout.stats import wilson_interval
from trqam_sdk.testing.tiny_lerobot import write_metaworld_like_dataset

REPO, SIZE, TASK = "local/metaworld-like", 32, "push-v3"
KW = dict(steps=4, batch_size=4, chunk_size=8, size="tiny", save_freq=2, progress=False)


def _ckpts(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / P.RUN_DIR / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_metaworld_like_dataset(tmp_path_factory.mktemp("mw") / "data", REPO, episodes=2, length=16,
                                        image_size=SIZE, task=TASK)


@pytest.fixture(scope="module")
def prior(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny SmolVLA prior, trained after a simulated crash before lerobot's first checkpoint (a stale
    output_dir that lerobot-train would refuse); intermediate checkpoints are kept for the resume test."""
    out = tmp_path_factory.mktemp("prior") / "smolvla"

    def crash(cmd: list[str], log: Path, progress: bool = True, what: str = "") -> float:
        (out / P.RUN_DIR / "checkpoints").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "run_logged", crash)
        with pytest.raises(KeyboardInterrupt):
            train_prior("smolvla", dataset, REPO, out, **KW)
        mp.undo()
        mp.setattr(P, "prune_checkpoints", lambda run_dir, keep: [])
        folder = train_prior("smolvla", dataset, REPO, out, **KW)
    return folder, out


def test_checkpoint_is_an_ordinary_lerobot_policy_with_min_max_actions(prior: tuple[Path, Path],
                                                                        dataset: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from trqam_sdk.adapters.lerobot import from_pretrained

    from trqam_sdk.integrations.lerobot.data import lerobot_transitions

    folder, out = prior
    assert folder == out.resolve() / "lerobot" / "checkpoints" / "last" / "pretrained_model"
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["type"] == "smolvla" and cfg["chunk_size"] == cfg["n_action_steps"] == 8
    assert cfg["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MIN_MAX"}
    assert cfg["resize_imgs_with_padding"] == [SIZE, SIZE] and cfg["load_vlm_weights"] is False
    assert Path(cfg["vlm_model_name"]).is_absolute() and Path(cfg["vlm_model_name"]) == out.resolve() / "vlm"
    train = json.loads((folder / "train_config.json").read_text())
    assert (train["steps"], train["batch_size"], train["seed"], train["num_workers"]) == (4, 4, 0, 0)
    assert train["wandb"]["enable"] is False and train["policy"]["push_to_hub"] is False

    policy = from_pretrained(folder)
    assert (policy.spec.horizon, policy.spec.action_dim) == (8, 4)
    data = lerobot_transitions(LeRobotDataset(REPO, root=str(dataset)), policy.preprocessor)
    # MIN_MAX against the dataset's own statistics: a = 2 (x - min) / (max - min) - 1, so every dim spans
    # exactly [-1, 1] (MEAN_STD would put uniform[-1, 1] actions at about ±1.7 and lerobot_transitions would raise)
    stats = json.loads((dataset / "meta" / "stats.json").read_text())
    raw = LeRobotDataset(REPO, root=str(dataset)).hf_dataset.with_format("numpy")
    x = np.stack(raw["action"])
    lo, hi = np.array(stats["action"]["min"]), np.array(stats["action"]["max"])
    np.testing.assert_allclose(data.actions.numpy(), 2 * (x - lo) / (hi - lo) - 1, atol=1e-5)
    np.testing.assert_allclose(data.actions.min(0).values.numpy(), -1, atol=1e-6)
    np.testing.assert_allclose(data.actions.max(0).values.numpy(), 1, atol=1e-6)
    s = np.stack(raw["observation.state"])
    mean, std = np.array(stats["observation.state"]["mean"]), np.array(stats["observation.state"]["std"])
    np.testing.assert_allclose(data.observations["observation.state"].numpy(), (s - mean) / std, atol=1e-4)


def test_second_call_returns_the_cached_checkpoint_without_training(prior: tuple[Path, Path],
                                                                    dataset: Path) -> None:
    folder, out = prior
    log = out / P.LOG_FILE
    before = (log.stat().st_mtime_ns, log.stat().st_size, (folder / "model.safetensors").stat().st_mtime_ns)
    again = train_prior("smolvla", dataset, REPO, out, **KW)
    assert again == folder
    assert (log.stat().st_mtime_ns, log.stat().st_size, (folder / "model.safetensors").stat().st_mtime_ns) == before
    assert log.read_text().count("lerobot-train --") == 1  # one lerobot-train command ever ran here


def test_a_changed_spec_or_a_foreign_folder_is_refused(prior: tuple[Path, Path], dataset: Path,
                                                       tmp_path: Path) -> None:
    _, out = prior
    with pytest.raises(ValueError, match=r"different spec.*'steps': \(4, 5\)"):
        train_prior("smolvla", dataset, REPO, out, steps=5, batch_size=4, size="tiny", save_freq=2, progress=False)
    with pytest.raises(ValueError, match="'chunk_size': \\(8, 4\\)"):
        train_prior("smolvla", dataset, REPO, out, steps=4, batch_size=4, chunk_size=4, size="tiny", save_freq=2,
                    progress=False)
    (tmp_path / "foreign" / P.RUN_DIR).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a run of train_prior"):
        train_prior("smolvla", dataset, REPO, tmp_path / "foreign", steps=4, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="unknown prior kind"):
        train_prior("gr00t", dataset, REPO, tmp_path / "x", steps=4, batch_size=4)
    with pytest.raises(FileNotFoundError, match="info.json"):
        train_prior("smolvla", tmp_path, REPO, tmp_path / "y", steps=4, batch_size=4)


def test_a_partial_run_resumes_with_lerobots_resume(prior: tuple[Path, Path], dataset: Path,
                                                     tmp_path: Path) -> None:
    _, src = prior
    assert _ckpts(src) == ["000002", "000004", "last"]
    out = tmp_path / "copy"
    shutil.copytree(src, out, symlinks=True)  # a moved folder resumes in place (--output_dir override)
    shutil.rmtree(out / P.RUN_DIR / "checkpoints" / "000004")  # killed during step 4's save: last dangles
    folder = train_prior("smolvla", dataset, REPO, out, **KW)
    assert folder.parent == out / P.RUN_DIR / "checkpoints" / "last" and P.checkpoint_step(folder.parent) == 4
    assert _ckpts(out) == ["000004", "last"]  # finished: the intermediate checkpoint is pruned
    assert _ckpts(src) == ["000002", "000004", "last"]  # the original run was not written to
    resumed = (out / P.LOG_FILE).read_text().split("--resume=true")
    assert len(resumed) == 2 and "checkpoints/000002/pretrained_model/train_config.json" in resumed[1][:300]
    steps_after = [line.split("step:")[1].split()[0] for line in resumed[1].splitlines() if " step:" in line]
    assert steps_after == ["3", "4"]  # continued after step 2: nothing retrained, nothing skipped


def test_run_logged_failure_names_command_and_log_tail(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "print('first'); print('boom at the end'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3.*-c.*boom at the end"):
        P.run_logged(cmd, tmp_path / "x.log", progress=False, what="test")
    assert "boom at the end" in (tmp_path / "x.log").read_text()
    assert subprocess.run([sys.executable, "-m", "trqam_sdk.integrations.lerobot.prior"],
                          capture_output=True).returncode == 2  # --tiny-pi is required


def test_lerobot_eval_result(prior: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = prior
    env_args = {"task": TASK, "image_size": SIZE, "episode_length": 6, "fast_render": True}
    with pytest.raises(KeyError, match="unknown: \\['colour'\\]"):
        run_lerobot_eval(folder, {**env_args, "colour": "x"}, episodes=1, seed=0, out_dir=tmp_path)
    res = run_lerobot_eval(folder, env_args, episodes=1, seed=5, batch_size=1, out_dir=tmp_path / "ev",
                           progress=False)
    assert {"success_rate", "successes", "episodes", "ci95_low", "ci95_high", "mean_return", "seeds", "seconds",
            "eval_info"} <= set(res)
    assert res["episodes"] == 1 and res["seeds"] == [5] and res["successes"] in (0, 1)
    assert (res["ci95_low"], res["ci95_high"]) == wilson_interval(res["successes"], 1)
    info = json.loads(Path(res["eval_info"]).read_text())
    assert res["mean_return"] == pytest.approx(info["overall"]["avg_sum_reward"])
    assert res["success_rate"] == pytest.approx(info["overall"]["pc_success"] / 100)
    assert "--env.type=trqam_metaworld" in (tmp_path / "ev" / "lerobot-eval.log").read_text()


def test_seed_rule_is_what_lerobot_eval_does(prior: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run lerobot's own eval_policy in-process on the SDK env, recording every reset seed."""
    from lerobot.envs.factory import make_env_pre_post_processors
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla import SmolVLAPolicy
    from lerobot.scripts.lerobot_eval import eval_policy

    from trqam_sdk.benchmarks.metaworld.env import EnvSettings, TrqamMetaworldEnv
    from trqam_sdk.benchmarks.metaworld.lerobot_env import env_config_from_settings

    folder, _ = prior
    seen: list[int | None] = []
    real_reset = TrqamMetaworldEnv.reset

    def reset(self, seed=None, **kw):  # type: ignore[no-untyped-def]
        seen.append(seed)
        return real_reset(self, seed=seed, **kw)

    monkeypatch.setattr(TrqamMetaworldEnv, "reset", reset)
    policy = SmolVLAPolicy.from_pretrained(str(folder))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(folder))
    env_cfg = env_config_from_settings(EnvSettings(TASK, image_size=SIZE, episode_length=3))
    env_pre, env_post = make_env_pre_post_processors(env_cfg=env_cfg, policy_cfg=policy.config)
    vec = env_cfg.create_envs(n_envs=2)[TASK][0]
    try:
        torch.manual_seed(0)
        info = eval_policy(vec, policy, env_pre, env_post, pre, post, n_episodes=3, start_seed=11)
    finally:
        vec.close()
    assert [e["seed"] for e in info["per_episode"]] == episode_seeds(11, 3) == [11, 12, 13]
    assert [s for s in seen if s is not None] == [11, 12, 13, 14]  # batch 2: seed 14 runs and is discarded

    # the episode after reset(seed=s) does not depend on what the env did before (the SDK can replay it)
    settings = EnvSettings(TASK, image_size=SIZE)
    fresh, used = TrqamMetaworldEnv(settings), TrqamMetaworldEnv(settings)
    try:
        used.reset(seed=3)
        used.step(np.ones(4, dtype=np.float32))
        a, b = fresh.reset(seed=12)[0], used.reset(seed=12)[0]
        np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
        np.testing.assert_array_equal(a["pixels"], b["pixels"])
        assert not np.array_equal(fresh.reset(seed=13)[0]["pixels"], b["pixels"])  # seeds do matter
    finally:
        fresh.close()
        used.close()


@pytest.mark.slow
def test_tiny_pi0_prior_trains_and_loads(dataset: Path, tmp_path: Path) -> None:
    from trqam_sdk.adapters.lerobot import from_pretrained

    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    folder = train_prior("pi0", dataset, REPO, tmp_path / "pi0", steps=2, batch_size=2, progress=False)
    pre = (folder / "policy_preprocessor.json").read_text()
    assert P.PALIGEMMA_TOKENIZER not in pre and str(tmp_path.resolve() / "pi0" / "tokenizer") in pre
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["type"] == "pi0" and cfg["chunk_size"] == 8 and cfg["image_resolution"] == [SIZE, SIZE]
    with tiny_pi_architecture():
        policy = from_pretrained(folder)
    assert (policy.spec.horizon, policy.spec.action_dim) == (8, 4)
    assert "-m trqam_sdk.integrations.lerobot.prior --tiny-pi" in (tmp_path / "pi0" / P.LOG_FILE).read_text()
