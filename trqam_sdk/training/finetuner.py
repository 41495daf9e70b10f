"""The Finetuner: any registered method on Hugging Face Accelerate.

Accelerate owns devices, DDP (each process takes a contiguous shard of the global batch, so the SDE
rollout and all VJPs of a batch are split across processes), mixed precision and trackers. The method is an
:class:`~trqam_sdk.methods.base.Agent` found by name in the registry: the loop draws the noise it asks for,
steps one optimiser on its loss and calls its after-step hook. Nothing here knows of critics, KL or λ.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from trqam_sdk.adapters.base import FlowPolicy
from trqam_sdk.config import FinetuneConfig, to_dict, validate
from trqam_sdk.core.pytree import tree_map
from trqam_sdk.data.transitions import ChunkSampler, Transitions
from trqam_sdk.io import append_jsonl, atomic_write_text, read_json, read_jsonl, write_jsonl
from trqam_sdk.methods.base import Agent
from trqam_sdk.methods.registry import get_method
from trqam_sdk.training import rundir
from trqam_sdk.training.bc import pretrain_bc
from trqam_sdk.training.checkpoint import load_checkpoint, save_checkpoint
from trqam_sdk.training.checks import check_compatible
from trqam_sdk.training.nonfinite import NonFiniteGuard, NonFiniteTrainingError, diagnose
from trqam_sdk.training.randomness import draw_step, shard_noise, step_generator

__all__ = ["Finetuner", "NonFiniteTrainingError", "check_compatible", "pretrain_bc", "step_generator"]

RESERVED_STATE = frozenset({"step", "optimizer", "method", "rebuilt_fingerprint"})
"""state.json keys save_checkpoint writes itself (a checkpoint hook may not return them)"""
RESUME_MUST_MATCH = ("method", "flow_steps", "batch_size", "seed")
"""config fields a resumed run must share with its checkpoint (others, e.g. ``steps`` or ``lr``, may change)"""


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


def _check_resumable(path: Path, cfg: FinetuneConfig) -> None:
    """Refuse (before anything is built or written) a checkpoint trained with a conflicting config."""
    saved = read_json(path / "state.json", "checkpoint state").get("config", {})
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != getattr(cfg, key):
            raise rundir.RunDirError(f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, "
                                     f"this run has {getattr(cfg, key)!r} (use another output folder or --overwrite)")


class Finetuner:
    """Off-policy fine-tuning of ``policy`` (the pretrained prior) on ``data`` with ``cfg.method``.

    ``on_existing`` says what to do with an earlier run in ``cfg.output_dir`` (training/rundir.py): ``"new"``
    refuses a non-empty folder, ``"resume"`` continues from its newest intact checkpoint (refused when there is none
    or its config conflicts), ``"overwrite"`` removes the earlier run first, ``"auto"`` resumes if it can, else
    overwrites. Every refusal happens before the folder is touched.
    """

    def __init__(self, cfg: FinetuneConfig, policy: FlowPolicy, data: Transitions,
                 critic: torch.nn.Module | None = None, accelerator: Accelerator | None = None,
                 on_existing: rundir.OnExisting = "new"):
        validate(cfg, where="FinetuneConfig")  # recipes and callers may have mutated it since it was built
        check_compatible(policy, data)
        main = os.environ.get("RANK", "0") == "0"  # torchrun / accelerate launch; the Accelerator comes later
        resume_from = rundir.plan(cfg.output_dir, on_existing, loud=main)  # read-only: refusals before any work
        if resume_from is not None:
            _check_resumable(resume_from, cfg)
        agent_cls = get_method(cfg.method)
        self.cfg, self.data = cfg, data
        self.run_dir = Path(cfg.output_dir)
        # cpu=True on a machine without CUDA lets torchrun-started processes join over gloo (accelerate 1.15
        # only enables MULTI_CPU when asked for the CPU explicitly).
        self.accelerator = accelerator or Accelerator(
            mixed_precision=None if cfg.mixed_precision == "auto" else cfg.mixed_precision,
            log_with=cfg.trackers or None, project_dir=cfg.output_dir,
            cpu=not torch.cuda.is_available())
        acc = self.accelerator
        if cfg.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {acc.num_processes} processes")
        set_seed(cfg.seed)
        conv = cfg.conventions
        if conv.action_clip is not None:  # idempotent when the loader already clipped
            self.data = data = data.clip_actions(conv.action_clip)
        self.sampler = ChunkSampler(data, policy.spec.horizon, mode=conv.chunk_sampling)
        agent_cls.parse_options(cfg.method_options)  # unknown or mistyped options fail before any work
        agent = agent_cls.build(cfg, policy, data, critic)
        params = [p for p in agent.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"method {cfg.method!r} built an agent with no trainable parameters")
        optimizer = torch.optim.Adam(params, lr=cfg.lr, foreach=True)  # multi-tensor; CPU default is a loop
        self.model, self.optimizer = acc.prepare(agent, optimizer)
        self.step, self.nonfinite_skips = 0, 0
        self.guard = NonFiniteGuard(cfg.max_nonfinite_skips, loud=acc.is_main_process)
        self.checkpoint_hooks: list[Callable[[], dict[str, Any]]] = []
        """called (main process) before each checkpoint is written, e.g. to save the replay buffer first; each
        returns JSON-able entries for its state.json (rollout/online.py records the buffer rows and counters)"""
        self.resumed_state: dict[str, Any] | None = None
        """state.json of the checkpoint the run resumed from (what the hooks recorded), None for a fresh run"""
        self.resumed_from: Path | None = resume_from
        """the checkpoint folder the run continues from"""
        self._lock: rundir.RunLock | None = None
        log, rows = self.run_dir / "metrics.jsonl", None
        if resume_from is not None:
            self._restore(resume_from)  # loads everything before the folder is touched (a mismatch refuses here)
            if acc.is_main_process and log.is_file():  # a corrupt log refuses here too, before any write
                rows = [r for r in read_jsonl(log) if r.get("step", 0) <= self.step]
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._lock = rundir.RunLock(self.run_dir)
            self.resumed_from = rundir.prepare(self.run_dir, on_existing, resume_from)
            if self.resumed_from is not None:
                print(f"resuming {self.run_dir} from {self.resumed_from.name} (step {self.step})", flush=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(to_dict(cfg), indent=2))
            if rows is not None:  # drop log rows past the checkpoint so the log stays one contiguous run
                write_jsonl(log, rows)
        acc.wait_for_everyone()
        if cfg.trackers:
            acc.init_trackers("trqam", config=_flat_config(cfg))

    @property
    def agent(self) -> Agent:
        return self.accelerator.unwrap_model(self.model)

    @property
    def policy(self) -> FlowPolicy:
        """The policy being fine-tuned."""
        return self.agent.policy

    # -- one update -------------------------------------------------------------------------------------
    def shard(self, step: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """This process's rows of the global batch and noise for ``step`` (identical for any process count)."""
        acc, b = self.accelerator, self.cfg.batch_size
        spec = self.agent.noise_spec(b)
        idx, noise = draw_step(self.cfg.seed, step, len(self.sampler), b, spec)
        per = b // acc.num_processes
        start = acc.process_index * per
        rows = self.sampler.sample(idx[start:start + per])
        batch = {k: tree_map(lambda x: x.to(acc.device), v) for k, v in rows.items()}
        noise = {k: v.to(acc.device) for k, v in shard_noise(noise, spec, start, per).items()}
        return batch, noise

    def update(self, batch: dict[str, Any], noise: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on this process's rows: loss, backward, global clip, all-reduced metrics, then the
        method's after-step hook — skipped, with the weights untouched, when the loss or gradient is non-finite."""
        acc, cfg = self.accelerator, self.cfg
        self.model.train()
        with acc.autocast():
            loss, metrics = self.model(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        clip = math.inf if cfg.grad_clip is None else cfg.grad_clip  # inf: the norm, never a rescale
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the norm as a DTensor, which reduce cannot take
            grad_norm = grad_norm.full_tensor()
        keys = sorted(metrics)
        stats = acc.reduce(torch.stack([loss.detach().float(), torch.as_tensor(grad_norm).float()]
                                       + [metrics[k].float() for k in keys]), reduction="mean")
        loss_all, gnorm = float(stats[0]), float(stats[1])
        out = {k: float(v) for k, v in zip(keys, stats[2:], strict=True)}
        if math.isfinite(loss_all) and math.isfinite(gnorm):
            self.optimizer.step()
            self.agent.after_step(out, self.step)
            self.guard.ok(self.step)
        else:  # a non-finite loss must not touch the weights, the targets or any dual variable
            why = diagnose(self.agent, loss_all, gnorm, out, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skips += 1
            self.guard.skipped(self.step, why)
        out.update(self.agent.status(self.step))
        self.step += 1
        out.update({"train/loss": loss_all, "train/grad_norm": gnorm, "train/nonfinite_skips": self.nonfinite_skips})
        return out

    def train_step(self) -> dict[str, float]:
        """Draw step ``self.step``'s batch and noise, then :meth:`update`."""
        return self.update(*self.shard(self.step))

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
        t_last, step_last = time.perf_counter(), self.step
        start, skips_before = self.step, self.guard.skipped_total
        while self.step < end:
            if before_step is not None:
                before_step(self.step)
            metrics = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                now = time.perf_counter()
                metrics["time/step_s"] = (now - t_last) / max(1, self.step - step_last)
                t_last, step_last = now, self.step
                self._log(metrics)
                bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in self.agent.progress_keys
                                 if k in metrics})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != end:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        self._report_skips(self.step - start, self.guard.skipped_total - skips_before)
        return metrics

    def _report_skips(self, updates: int, skipped: int) -> None:
        """A console summary of this call's skipped updates; an error when no update of this Finetuner (since it
        was built or resumed) has succeeded — short train() calls (an online loop) are judged over all of them."""
        if not skipped:
            return
        g = self.guard
        if g.limit and g.succeeded == 0:
            raise NonFiniteTrainingError(
                f"training failed: all {g.skipped_total} updates (steps {self.step - g.skipped_total}..{self.step - 1})"
                " were non-finite and skipped, the weights never changed; the first warning above names what went "
                "non-finite. Check the data's scale, the prior's weights, lr and lam_init")
        if self.accelerator.is_main_process:
            tqdm.write(f"warning: {skipped} of {updates} updates were non-finite and skipped "
                       f"(train/nonfinite_skips in {self.run_dir / 'metrics.jsonl'})", file=sys.stderr)

    def log_to_trackers(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Namespaced metrics from outside the update (the runner's ``eval/…``) to the trackers, at ``step``."""
        if self.cfg.trackers:
            self.accelerator.log(metrics, step=self.step if step is None else step)

    def _log(self, metrics: dict[str, float]) -> None:
        acc = self.accelerator
        if self.cfg.trackers:
            acc.log(metrics, step=self.step)
        if acc.is_main_process:
            append_jsonl(self.run_dir / "metrics.jsonl", {"step": self.step, **dict(sorted(metrics.items()))})

    def _optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    def save_checkpoint(self, best: bool = False, **best_info: float) -> Path | None:
        """Write ``checkpoints/step-N`` (atomically, see training/checkpoint.py), then prune to
        ``cfg.keep_checkpoints``; ``best=True`` marks it in ``best.json`` (with ``best_info``, e.g. a success
        rate), so pruning keeps it."""
        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            raise NotImplementedError("checkpoints under FSDP are not written yet (the agent's tensors are sharded; "
                                      "docs/scaling.md): use DDP, or checkpoint_every 0 and save the policy from a "
                                      "gathered state dict")
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            state = {"config": to_dict(self.cfg), "nonfinite_skips": self.nonfinite_skips,
                     "num_processes": acc.num_processes}
            for hook in self.checkpoint_hooks:
                extra = hook()
                clash = sorted(extra.keys() & (state.keys() | RESERVED_STATE))
                if clash:
                    raise ValueError(f"checkpoint hook {hook!r} returned reserved state.json keys {clash}")
                state.update(extra)
            path = save_checkpoint(self.run_dir, self.step, self.agent, self._optimizer(), state)
            if best:
                rundir.mark_best(self.run_dir, self.step, **best_info)
            rundir.prune(self.run_dir, self.cfg.keep_checkpoints, protect=path)
        acc.wait_for_everyone()
        return path

    def _restore(self, path: Path) -> None:
        """Load the checkpoint at ``path`` into the agent and optimiser and continue at its step."""
        state = load_checkpoint(path, self.agent, self._optimizer())
        self.resumed_state = state
        self.step, self.nonfinite_skips = int(state["step"]), int(state.get("nonfinite_skips", 0))

    def save_policy(self, path: str | Path) -> Path:
        return self.policy.save_pretrained(path)

    def end(self) -> None:
        """Close the trackers and release the run folder's lock."""
        if self.cfg.trackers:
            self.accelerator.end_training()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
