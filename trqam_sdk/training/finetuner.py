"""The Finetuner: TRQAM / QAM / QAM + External KL on Hugging Face Accelerate.

Accelerate owns devices, DDP (each process takes a contiguous shard of the global batch, so the SDE
rollout and all VJPs of a batch are split across processes), mixed precision and trackers. The math
lives in flow.py / objectives.py / dual.py and the agent; nothing here changes it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trqam_sdk.adapters.base import FlowPolicy, tree_map
from trqam_sdk.config import FinetuneConfig, to_dict
from trqam_sdk.core.dual import budget_at
from trqam_sdk.core.losses import flow_matching_loss
from trqam_sdk.data.transitions import ChunkSampler, Transitions
from trqam_sdk.methods.trqam import TRQAMAgent
from trqam_sdk.networks.mlp import QEnsemble
from trqam_sdk.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

JSONL_KEYS = ("critic_loss", "adj_loss", "bc_loss", "path_kl", "kl_ema", "lam", "kl_budget")


def step_generator(seed: int, step: int) -> torch.Generator:
    """All randomness of an update is a pure function of (seed, step): exact resume, 1 vs N processes."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def check_compatible(policy: FlowPolicy, data: Transitions) -> None:
    if data.action_dim != policy.spec.action_dim:
        raise ValueError(f"data actions have dim {data.action_dim}, the policy expects {policy.spec.action_dim}")
    if isinstance(data.observations, dict):  # the adapter validates dict observations in `condition`
        return
    obs_dim = getattr(getattr(policy, "config", None), "obs_dim", data.obs_dim)
    if obs_dim != data.obs_dim:
        raise ValueError(f"data observations have dim {data.obs_dim}, the policy expects {obs_dim}")


def pretrain_bc(policy: FlowPolicy, data: Transitions, steps: int, batch_size: int = 256, lr: float = 3e-4,
                seed: int = 0, progress: bool = True) -> FlowPolicy:
    """Flow-matching behaviour cloning of the prior on dataset chunks (SPEC §6's first stage)."""
    check_compatible(policy, data)
    sampler = ChunkSampler(data, policy.spec.horizon)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    bar = tqdm(range(steps), desc="BC pretrain", disable=not progress, mininterval=1.0)
    for step in bar:
        g = step_generator(seed + 7919, step)
        batch = sampler.sample(torch.randint(len(sampler), (batch_size,), generator=g))
        x1 = batch["actions"].flatten(1)
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(batch_size, generator=g)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        w = batch["valid_steps"].repeat_interleave(policy.spec.action_dim, dim=1)
        loss = flow_matching_loss(policy.velocity(policy.condition(batch["observations"]), xt, t), x0, x1, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return policy


def _flat_config(cfg: FinetuneConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[prefix + k] = v if isinstance(v, int | float | str | bool) else str(v)

    walk("", to_dict(cfg))
    return out


class Finetuner:
    """Off-policy fine-tuning of ``policy`` (the pretrained prior) on ``data`` with the configured method."""

    def __init__(self, cfg: FinetuneConfig, policy: FlowPolicy, data: Transitions,
                 critic: QEnsemble | None = None, accelerator: Accelerator | None = None):
        check_compatible(policy, data)
        self.cfg, self.data = cfg, data
        self.run_dir = Path(cfg.output_dir)
        # cpu=True on a machine without CUDA lets torchrun-started processes join over gloo (accelerate 1.15
        # only enables MULTI_CPU when asked for the CPU explicitly).
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision, log_with=cfg.trackers or None, project_dir=cfg.output_dir,
            cpu=not torch.cuda.is_available())
        acc = self.accelerator
        if cfg.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {acc.num_processes} processes")
        set_seed(cfg.seed)
        self.sampler = ChunkSampler(data, policy.spec.horizon)
        c = cfg.critic
        critic = critic or QEnsemble(data.obs_dim, policy.spec.flat_dim, c.num_critics, c.width, c.depth,
                                     c.layer_norm)
        agent = TRQAMAgent(copy.deepcopy(policy), copy.deepcopy(policy), critic, cfg)
        params = [p for p in agent.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, foreach=True)  # multi-tensor; CPU default is a loop
        self.model, self.optimizer = acc.prepare(agent, optimizer)
        self.step, self.nonfinite_skips = 0, 0
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        if cfg.trackers:
            acc.init_trackers("trqam", config=_flat_config(cfg))

    @property
    def agent(self) -> TRQAMAgent:
        return self.accelerator.unwrap_model(self.model)

    # -- one update -------------------------------------------------------------------------------------
    def shard(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """This process's rows of the global batch and noise for ``step`` (identical for any process count)."""
        acc, b = self.accelerator, self.cfg.batch_size
        g = step_generator(self.cfg.seed, step)
        idx = torch.randint(len(self.sampler), (b,), generator=g)
        noise = {k: torch.randn(s, generator=g) for k, s in self.agent.noise_shapes(b).items() if k != "bc_t"}
        noise["bc_t"] = torch.rand(b, generator=g)
        per = b // acc.num_processes
        rows = slice(acc.process_index * per, (acc.process_index + 1) * per)
        batch = {k: tree_map(lambda x: x.to(acc.device), v) for k, v in self.sampler.sample(idx[rows]).items()}
        noise = {k: (v[:, rows] if k == "sde" else v[rows]).to(acc.device) for k, v in noise.items()}
        return batch, noise

    def train_step(self) -> dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        kl_budget = budget_at(self.step, cfg.trust_region.kl_budget, cfg.trust_region.kl_budget_schedule)
        batch, noise = self.shard(self.step)
        self.model.train()
        with acc.autocast():
            loss, kl, metrics = self.model(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        keys = sorted(metrics)
        stats = acc.reduce(torch.stack([loss.detach().float(), kl.float(), torch.as_tensor(grad_norm).float()]
                                       + [metrics[k].float() for k in keys]), reduction="mean")
        loss_all, kl_hat, gnorm = (float(x) for x in stats[:3])
        if math.isfinite(loss_all) and math.isfinite(gnorm):
            self.optimizer.step()
            self.agent.update_targets()
            self.agent.dual_step(kl_hat, kl_budget)
        else:  # a non-finite loss must not touch the weights, the targets or λ
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skips += 1
        self.step += 1
        out = {k.split("/")[-1]: float(v) for k, v in zip(keys, stats[3:], strict=True)}
        out.update(loss=loss_all, path_kl=kl_hat, grad_norm=gnorm, kl_ema=float(self.agent.kl_ema),
                   lam=float(self.agent.lam), kl_budget=kl_budget, nonfinite_skips=self.nonfinite_skips)
        return out

    # -- loop, logging, checkpoints --------------------------------------------------------------------
    def train(self, steps: int | None = None, progress: bool = True,
              before_step: Callable[[int], None] | None = None) -> dict[str, float]:
        """Run to ``cfg.steps`` (or ``steps`` more). ``before_step(step)`` runs before each update: the online
        phase steps the environment there (UTD 1) and periodic evaluation hooks in."""
        acc, cfg = self.accelerator, self.cfg
        end = cfg.steps if steps is None else self.step + steps
        bar = tqdm(total=end, initial=self.step, desc=f"{cfg.method}", mininterval=1.0,
                   disable=not (progress and acc.is_local_main_process))
        metrics: dict[str, float] = {}
        while self.step < end:
            if before_step is not None:
                before_step(self.step)
            metrics = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                self._log(metrics)
                bar.set_postfix(kl=f"{metrics['kl_ema']:.3f}", lam=f"{metrics['lam']:.3f}",
                                q=f"{metrics['critic_loss']:.3f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != end:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        return metrics

    def _log(self, metrics: dict[str, float]) -> None:
        acc = self.accelerator
        if self.cfg.trackers:
            acc.log({f"train/{k}": v for k, v in metrics.items()}, step=self.step)
        if acc.is_main_process:
            row = {"step": self.step, **{k: metrics[k] for k in JSONL_KEYS},
                   **{k: v for k, v in metrics.items() if k not in JSONL_KEYS}}
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def save_checkpoint(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            state = {"config": to_dict(self.cfg), "nonfinite_skips": self.nonfinite_skips,
                     "num_processes": acc.num_processes}
            path = save_checkpoint(self.run_dir, self.step, self.agent, self.optimizer.optimizer
                                   if hasattr(self.optimizer, "optimizer") else self.optimizer, state)
        acc.wait_for_everyone()
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` or the run's latest checkpoint; returns False when there is none."""
        path = Path(path) if path else latest_checkpoint(self.run_dir)
        if path is None:
            return False
        opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        state = load_checkpoint(path, self.agent, opt)
        saved = state["config"]
        for key in ("method", "flow_steps", "batch_size", "seed"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"checkpoint {path} was trained with {key}={saved.get(key)!r}, "
                                 f"this run has {getattr(self.cfg, key)!r}")
        self.step, self.nonfinite_skips = int(state["step"]), int(state.get("nonfinite_skips", 0))
        if self.accelerator.is_main_process:  # drop log rows past the checkpoint so the log stays one run
            log = self.run_dir / "metrics.jsonl"
            if log.is_file():
                rows = [r for r in log.read_text().splitlines() if r and json.loads(r)["step"] <= self.step]
                log.write_text("".join(r + "\n" for r in rows))
        return True

    def save_policy(self, path: str | Path) -> Path:
        return self.agent.actor.save_pretrained(path)

    def end(self) -> None:
        if self.cfg.trackers:
            self.accelerator.end_training()
