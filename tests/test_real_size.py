"""Real-size LeRobot builders (meta: shapes and parameter counts), the meta-tensor memory estimate against a
measured run, and `trqam lerobot-bench`. Real-memory builds are ``slow``."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
import torch

from trqam_sdk.testing.real_size import build_lerobot, parameter_counts

M = 1e6


@pytest.fixture(scope="module")
def meta_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("real")
    return {k: build_lerobot(k, root / k, device="meta") for k in ("smolvla", "pi0", "pi05")}


def test_smolvla_real_shape_on_meta(meta_models: dict) -> None:
    policy = meta_models["smolvla"][0]
    assert all(p.device.type == "meta" for p in policy.parameters())
    vwe = policy.model.vlm_with_expert
    text, vision = vwe.config.text_config, vwe.config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (960, 15, 5)
    assert text.vocab_size == 49280
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (768, 12, 512, 16)
    assert vwe.config.scale_factor == 4
    assert len(vwe.get_vlm_model().text_model.layers) == 16  # SmolVLA keeps 16 of the 32 text layers
    assert vwe.lm_expert.config.hidden_size == 720           # expert width 0.75 × 960
    n = parameter_counts(policy)
    assert n["total"] == pytest.approx(450 * M, rel=0.01)    # released: 450 M
    assert n["expert"] == pytest.approx(98.2 * M, rel=0.01)  # released: ~100 M action expert


def test_pi_real_shapes_on_meta(meta_models: dict) -> None:
    for kind in ("pi0", "pi05"):
        policy = meta_models[kind][0]
        pwe = policy.model.paligemma_with_expert
        text = pwe.paligemma.config.text_config
        assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (2048, 18, 16384)  # gemma_2b
        assert pwe.paligemma.config.vision_config.num_hidden_layers == 27                              # so400m
        assert pwe.gemma_expert.config.hidden_size == 1024                                             # gemma_300m
        n = parameter_counts(policy)
        # PaliGemma 2.9 B + expert: the released ~3.3 B once lerobot's two unused, untied lm_heads are left out
        assert n["lm_heads"] == pytest.approx(790 * M, rel=0.01)
        assert n["vision"] == pytest.approx(412.4 * M, rel=0.01)
        assert n["used"] == pytest.approx((3238 if kind == "pi0" else 3353.4) * M, rel=0.01)
        assert n["expert"] == pytest.approx((311.5 if kind == "pi0" else 427.9) * M, rel=0.01)  # pi0.5: adaRMS


def test_sizes_and_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown lerobot policy kind"):
        build_lerobot("act", tmp_path)
    with pytest.raises(ValueError, match="tiny"):
        build_lerobot("smolvla", tmp_path, "tiny", n_images=2)
    policy, pre, _ = build_lerobot("smolvla", tmp_path / "two", device="meta", n_images=2, image_size=256)
    assert len(policy.config.image_features) == 2
    assert policy.config.input_features["observation.images.cam1"].shape == (3, 256, 256)
    assert pre is not None


@functools.cache
def _tiny_problem(batch: int) -> tuple:
    """A tiny SmolVLA agent (CPU), a meta twin built the same way, one batch and the finetune config."""
    from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS

    from trqam_sdk.config import CriticConfig, FinetuneConfig
    from trqam_sdk.data.transitions import ChunkSampler, Transitions
    from trqam_sdk.methods.registry import get_method
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.profiling.lerobot_bench import _observations
    from trqam_sdk.profiling.memory import build_meta_agent

    root = Path(tempfile.mkdtemp())
    cpu = LEROBOT_ADAPTERS["smolvla"](*build_lerobot("smolvla", root / "a", "tiny", chunk_size=10, state_dim=4,
                                                     action_dim=3))
    meta = LEROBOT_ADAPTERS["smolvla"](*build_lerobot("smolvla", root / "b", "tiny", chunk_size=10, state_dim=4,
                                                      action_dim=3)).to("meta")
    g = torch.Generator().manual_seed(0)
    rows = max(batch, 11)
    terminals = torch.zeros(rows)
    terminals[-1] = 1
    data = Transitions(observations=_observations(cpu, cpu.preprocessor, rows, g),
                       actions=torch.rand(rows, 3, generator=g) * 2 - 1, rewards=torch.randn(rows, generator=g),
                       masks=torch.ones(rows), terminals=terminals,
                       next_observations=_observations(cpu, cpu.preprocessor, rows, g))
    cfg = FinetuneConfig(flow_steps=4, batch_size=batch, reference="frozen", trackers=[],
                         output_dir=str(root / "run"), critic=CriticConfig(num_critics=2, width=64, depth=2))
    batch_rows = ChunkSampler(data, cpu.spec.horizon).sample(torch.arange(batch) % 2)
    agent = get_method("trqam").build(cfg, cpu, data, vla_critic(cpu, 2, 64, 2))
    meta_agent = build_meta_agent(cfg, meta, data, vla_critic(meta, 2, 64, 2))
    return agent, meta_agent, batch_rows, cfg


@pytest.mark.parametrize("batch", [4, 16])
def test_update_estimate_matches_a_measured_run(batch: int) -> None:
    """The meta estimate of two updates against the same two updates run on CPU tensors (live-tensor peak):
    the same accounting on two devices, so they agree to the byte up to kernels that differ (CPU's fused SDPA
    vs meta's math attention): within 5 %."""
    from trqam_sdk.profiling.memory import estimate_update_memory, measure_peak

    agent, meta_agent, rows, cfg = _tiny_problem(batch)
    est = estimate_update_memory(meta_agent, rows, batch, lr=cfg.lr, grad_clip=cfg.grad_clip)
    params = [p for p in agent.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
    g = torch.Generator().manual_seed(0)
    noise = {k: (torch.rand if n.kind == "uniform" else torch.randn)(n.shape, generator=g)
             for k, n in agent.noise_spec(batch).items()}

    def two_updates() -> None:
        for _ in range(2):
            loss, _ = agent(rows, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
            opt.step()
            agent.update_targets()

    measured = measure_peak(two_updates, existing=(agent, rows, noise))
    estimated = est["peak_bytes"] - est["start_bytes"]  # the measured run starts with params, data, no Adam
    assert estimated == pytest.approx(measured["allocated"], rel=0.05)
    assert measured["rss"] > 0
    trainable = sum(p.numel() * p.element_size() for p in params)
    assert est["grads_bytes"] == trainable and est["optimizer_state_bytes"] == 2 * trainable  # Adam: m and v
    assert est["params_trainable_bytes"] == trainable


def test_estimate_scales_with_batch_and_refuses_real_tensors() -> None:
    from trqam_sdk.profiling.memory import estimate_sample_memory, estimate_update_memory

    agent, meta_agent, rows, _ = _tiny_problem(4)
    small, big = (estimate_update_memory(meta_agent, rows, b, steps=1) for b in (4, 32))
    forward = [e["breakdown_at_peak_gib"].get("forward", 0) for e in (small, big)]
    assert big["peak_bytes"] > small["peak_bytes"] and forward[1] > 4 * forward[0]  # activations ∝ batch
    assert big["params_trainable_bytes"] == small["params_trainable_bytes"]
    s = estimate_sample_memory(meta_agent.actor, rows["observations"], 4)
    assert 0 < s["peak_bytes"] < small["peak_bytes"]
    with pytest.raises(ValueError, match="meta device"):
        estimate_update_memory(agent, rows, 4)


def test_lerobot_bench_cli_tiny_json(capsys: pytest.CaptureFixture[str]) -> None:
    from trqam_sdk.cli import main

    assert main(["lerobot-bench", "--kinds", "smolvla", "--batch", "2", "--flow-steps", "3", "--chunk-size", "8",
                 "--repeats", "1", "--estimate-batches", "4", "--checkpoint-sizes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    r = out["results"][0]
    assert r["kind"] == "smolvla" and r["size"] == "tiny" and r["batch"] == 2
    assert r["sample_ms"] > 0 and r["update_ms"] > 0 and r["ratio"] == pytest.approx(r["update_ms"] / r["sample_ms"],
                                                                                     abs=0.01)
    assert r["passes"]["sample"]["prefix"] == 1 and r["passes"]["sample"]["expert_calls"] == 3
    assert r["passes"]["update"]["prefix"] >= 2 and r["passes"]["update"]["expert_rows"] > 3 * 2
    assert 0 < r["params"]["policy_trainable"] < r["params"]["policy_total"]
    assert r["memory"]["process_peak_rss_gib"] > 0
    est = r["estimate"]["4"]
    assert est["update_peak_gib"] > est["sample_peak_gib"] > 0
    c = r["checkpoint"]
    assert c["parts_bytes"]["policy"] == pytest.approx(c["policy_alone_bytes"], rel=0.05)
    assert c["total_bytes"] >= sum(c["parts_bytes"].values()) - 1


@pytest.mark.slow
def test_real_smolvla_saves_loads_and_updates(tmp_path: Path) -> None:
    """Real-size SmolVLA (≈ 450 M, ~6 GB peak): lerobot's save_pretrained → the SDK's from_pretrained (the Hub
    checkpoint path), then one TRQAM update at batch 1 through the finetuner."""
    from trqam_sdk.adapters.lerobot import from_pretrained

    from trqam_sdk.profiling.lerobot_bench import bench_kind

    policy, pre, post = build_lerobot("smolvla", tmp_path / "model")
    policy.save_pretrained(tmp_path / "ckpt")
    pre.save_pretrained(tmp_path / "ckpt")
    post.save_pretrained(tmp_path / "ckpt")
    first = next(iter(policy.state_dict().values())).clone()
    del policy
    adapter = from_pretrained(tmp_path / "ckpt")
    assert parameter_counts(adapter.policy)["total"] == pytest.approx(450 * M, rel=0.01)
    assert torch.equal(next(iter(adapter.policy.state_dict().values())), first)
    del adapter
    r = bench_kind("smolvla", 1, 10, 50, None, 1, size="real")
    assert r["update_ms"] > r["sample_ms"] > 0


def test_lerobot_bench_estimate_only_builds_nothing_real(capsys: pytest.CaptureFixture[str]) -> None:
    from trqam_sdk.cli import main

    assert main(["lerobot-bench", "--kinds", "pi05", "--estimate-only", "--chunk-size", "8", "--flow-steps", "2",
                 "--estimate-batches", "2", "4"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    small, big = r["estimate"]["2"], r["estimate"]["4"]
    assert small["params_frozen_gib"] == big["params_frozen_gib"] > 0
    assert big["update_peak_gib"] > small["update_peak_gib"] > big["sample_peak_gib"] > 0


def test_adapter_options_are_feature_detected() -> None:
    from trqam_sdk.profiling.lerobot_bench import adapter_options

    class Old:  # an adapter from before the memory options
        def __init__(self, policy: object, pre: object = None, post: object = None, lora_rank: int = 0) -> None: ...

    class New(Old):
        def __init__(self, policy: object, pre: object = None, post: object = None, lora_rank: int = 0, *,
                     vlm_dtype: str = "float32", gradient_checkpointing: bool = False) -> None: ...

    assert adapter_options(Old, lora_rank=4) == {"lora_rank": 4}
    assert adapter_options(Old, vlm_dtype="float32") == {"lora_rank": 0}  # the default: nothing to pass
    with pytest.raises(ValueError, match="vlm_dtype"):
        adapter_options(Old, vlm_dtype="bfloat16")
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        adapter_options(Old, checkpointing=True)
    assert adapter_options(New, vlm_dtype="bfloat16", checkpointing=True) == {
        "lora_rank": 0, "vlm_dtype": "bfloat16", "gradient_checkpointing": True}
