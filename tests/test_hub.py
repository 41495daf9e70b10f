"""Hub round trip for the LeRobot adapters: push_to_hub's exact upload, reloading in lerobot and in the SDK.

``HfApi.create_commit`` / ``create_repo`` are intercepted (nothing can reach the Hub here); the files the commit
would upload are written to a folder and loaded back by lerobot's own ``from_pretrained`` and by the SDK.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lerobot_tiny import KINDS, Tiny, tiny
from trqam_sdk.adapters import load_policy
from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS, from_pretrained

from trqam_sdk.integrations.lerobot import hub
from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

B = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(params=KINDS)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(request.param, tmp_path_factory.getbasetemp() / "lerobot-tiny")


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record what push_to_hub would send: the repo creation and the commit's (path, bytes) operations."""
    from huggingface_hub import HfApi

    calls: dict[str, Any] = {"repos": [], "commits": []}

    def create_repo(self: HfApi, repo_id: str, **kw: Any) -> str:
        calls["repos"].append((repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self: HfApi, repo_id: str, operations: list, **kw: Any) -> str:
        calls["commits"].append((repo_id, {op.path_in_repo: Path(op.path_or_fileobj).read_bytes()
                                           for op in operations}, kw))
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def fine_tuned(m: Tiny) -> Any:
    """A copy of the tiny policy whose expert weights moved (stands in for a fine-tune)."""
    policy = m.fresh()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return policy


def expected_files(kind: str) -> set[str]:
    step = {"pi0": 6, "pi05": 3, "smolvla": 5}[kind]  # index of the normaliser in each preprocessor pipeline
    return {"config.json", "model.safetensors", "README.md", "trqam_state.json", "policy_preprocessor.json",
            "policy_postprocessor.json", f"policy_preprocessor_step_{step}_normalizer_processor.safetensors",
            "policy_postprocessor_step_0_unnormalizer_processor.safetensors"}


SUMMARY = {"base_model": "local/tiny", "method": "trqam", "kl_budget": 0.05, "final_lambda": 1.7,
           "final_kl_ema": 0.049, "steps": 3, "results": {"success_rate": 0.5},
           "kl_curve": [{"step": s, "path_kl": 0.01 * s, "kl_ema": 0.005 * s, "lam": 1 + 0.1 * s} for s in (1, 2, 3)]}


def test_push_to_hub_uploads_a_checkpoint_lerobot_and_the_sdk_load_identically(
        model: Tiny, hub_calls: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = fine_tuned(model)
    hub.push_to_hub(policy, "user/trqam-tiny", SUMMARY, private=True)
    assert hub_calls["repos"] == [("user/trqam-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (repo_id, files, kw), = hub_calls["commits"]
    assert repo_id == "user/trqam-tiny" and kw["repo_type"] == "model"
    assert set(files) == expected_files(model.kind)
    folder = tmp_path / "downloaded"
    for name, blob in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)

    state = json.loads(files["trqam_state.json"])
    assert state["kl_budget"] == 0.05 and state["final_lambda"] == 1.7 and len(state["kl_curve"]) == 3
    card = files["README.md"].decode()
    for needle in ("base_model: local/tiny", "KL budget ε: 0.05", "Final λ: 1.7", "success_rate", "| 3 | 0.03"):
        assert needle in card, needle

    # lerobot loads it as its own policy; with the same noise it acts exactly as the policy we pushed
    from lerobot.policies.factory import get_policy_class

    with tiny_pi_architecture():
        theirs = get_policy_class(model.kind).from_pretrained(str(folder))
        ours = from_pretrained("user/trqam-tiny") if _fake_snapshot(monkeypatch, folder) else None
    raw = model.raw(B, torch.Generator().manual_seed(2))
    batch = {k: v for k, v in policy.preprocessor(raw).items() if isinstance(v, torch.Tensor)}
    reloaded_batch = {k: v for k, v in ours.preprocessor(raw).items() if isinstance(v, torch.Tensor)}
    assert batch.keys() == reloaded_batch.keys() and all(torch.equal(batch[k], reloaded_batch[k]) for k in batch)
    chunks = []
    for p in (policy.policy, theirs, ours.policy):
        p.reset()
        torch.manual_seed(0)
        chunks.append(p.predict_action_chunk(dict(batch)))
    assert torch.equal(chunks[0], chunks[1]) and torch.equal(chunks[0], chunks[2])
    assert not torch.equal(chunks[0], _chunk(model.policy, batch)), "the pushed weights are the base weights"

    # and the SDK adapter reloaded from the Hub gives identical velocities and samples
    obs = {k: v for k, v in batch.items() if k.startswith("observation.")}
    x, t = torch.randn(B, policy.spec.flat_dim), torch.rand(B)
    assert torch.equal(ours.velocity(ours.condition(obs), x, t), policy.velocity(policy.condition(obs), x, t))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(ours.sample(obs, 5, g1), policy.sample(obs, 5, g2))
    with tiny_pi_architecture():
        generic = load_policy(folder)  # the SDK's generic loader recognises lerobot checkpoints
    assert type(generic) is LEROBOT_ADAPTERS[model.kind]


def _fake_snapshot(monkeypatch: pytest.MonkeyPatch, folder: Path) -> bool:
    """Serve ``folder`` for a Hub repo id, as snapshot_download would after downloading it."""
    import huggingface_hub

    def snapshot_download(repo_id: str, revision: str | None = None, **kw: Any) -> str:
        assert repo_id == "user/trqam-tiny"
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return True


def _chunk(policy: Any, batch: dict) -> torch.Tensor:
    policy.reset()
    torch.manual_seed(0)
    return policy.predict_action_chunk(dict(batch))


def test_training_summary_and_card_from_a_real_run(hub_calls: dict[str, Any], tmp_path: Path,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """A 3-step SmolVLA fine-tune: the card and trqam_state.json carry its ε, final λ and logged KL curve."""
    from accelerate.state import AcceleratorState

    from trqam_sdk.config import CriticConfig, FinetuneConfig
    from trqam_sdk.data.transitions import Transitions
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.training.finetuner import Finetuner

    m = tiny("smolvla", tmp_path_factory.getbasetemp() / "lerobot-tiny")
    AcceleratorState._reset_state(reset_partial_state=True)
    g = torch.Generator().manual_seed(0)
    n = 12
    obs = m.obs(n, g=g)
    data = Transitions(observations=obs, actions=torch.rand(n, 3, generator=g) * 2 - 1, rewards=torch.randn(n),
                       masks=torch.ones(n), terminals=(torch.arange(n) == n - 1).float(),
                       next_observations=obs)  # one episode: every chunk of 8 fits
    cfg = FinetuneConfig(batch_size=4, steps=3, flow_steps=3, log_every=1, trackers=[], reference="frozen",
                         output_dir=str(tmp_path / "run"), critic=CriticConfig(num_critics=2, width=32, depth=2))
    policy = m.fresh()
    ft = Finetuner(cfg, policy, data, critic=vla_critic(policy, 2, 32, 2))
    ft.train(progress=False)
    summary = hub.training_summary(ft, results={"note": "tiny"}, base_model="local/tiny-smolvla")
    assert [r["step"] for r in summary["kl_curve"]] == [1, 2, 3]
    logged = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(c["path_kl"], c["kl_ema"], c["lam"]) for c in summary["kl_curve"]] == [
        (r["actor/path_kl"], r["dual/kl_ema"], r["dual/lam"]) for r in logged]  # the curve is the logged one
    assert summary["final_lambda"] == pytest.approx(float(ft.agent.lam))
    hub.push_to_hub(ft.agent.actor, "user/run", summary)
    files = hub_calls["commits"][-1][1]
    card = files["README.md"].decode()
    assert f"Final λ: {summary['final_lambda']:.4g}" in card and "KL budget ε: 0.5" in card
    assert json.loads(files["trqam_state.json"])["kl_curve"] == summary["kl_curve"]


def test_load_errors_name_the_problem(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    m = tiny("smolvla", tmp_path_factory.getbasetemp() / "lerobot-tiny")
    with pytest.raises(FileNotFoundError, match="not found"):
        from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(empty)
    with pytest.raises(ValueError, match="'smolvla' checkpoint.*loads 'pi0'"):
        LEROBOT_ADAPTERS["pi0"].from_pretrained(m.checkpoint)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in m.checkpoint.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["max_action_dim"] = 16
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"does not match.*action_in_proj"):
        from_pretrained(bad)
    with pytest.raises(TypeError, match="LeRobot adapter"):
        hub.save_pretrained(torch.nn.Linear(1, 1), tmp_path / "x")  # type: ignore[arg-type]
