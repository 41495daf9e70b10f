"""Peak memory of one TRQAM update (and of sampling) at any batch size, estimated without allocating it.

The update runs on ``meta`` tensors (shapes and dtypes only, no data) under :class:`LiveStorages`, a
``TorchDispatchMode`` that sees every tensor the update creates — forward, the VJPs inside it, backward,
grad clipping, the optimiser step, the EMA targets — counts its storage's bytes when it appears and subtracts
them when the storage is freed (a ``weakref.finalize`` on the storage object, which PyTorch keeps alive exactly
as long as its storage), so the maximum of the running sum is the peak of live tensor memory. This is what a
GPU's ``torch.cuda.max_memory_allocated`` reports up to the allocator's rounding and kernel workspaces.

Why not ``torch.distributed._tools.mem_tracker.MemTracker`` (torch 2.11): it registers gradient hooks on every
parameter a module forward touches and raises on frozen ones ("cannot register a hook on a tensor that doesn't
require gradient") — our VLM is frozen. Why not ``FakeTensorMode``: meta tensors need no conversion of the
(shared, deep-copied) modules and behave the same for memory.

Limits, by construction: the CPU/meta path's kernels (eager attention materialises its probabilities; a GPU's
fused SDPA would not, and lerobot's pi0 / SmolVLA use eager attention), no allocator fragmentation or caching,
no CUDA context / cuBLAS workspace (~0.5–1 GB on a GPU), and storages resized in place by ``resize_`` keep their
first size. Data-dependent Python control flow (``.item()``) cannot run on meta: the TRQAM update has none
besides the finetuner's metric logging and dual step, which the estimate skips (they allocate scalars only).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

GIB = 2**30


class LiveStorages(TorchDispatchMode):
    """Bytes of live tensor storages by category, and their peak; tensors made outside must be :meth:`track`-ed.

    Outputs of ops are labelled with :attr:`phase` ("forward", "backward", "optimizer", …); parameters' gradients
    are relabelled "grads" when accumulated (a post-accumulate hook), so the breakdown at the peak separates
    parameters, gradients, optimiser state and activations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.live: dict[str, int] = defaultdict(int)
        self.peak = 0
        self.peak_at: dict[str, int] = {}
        self.peak_phase = ""
        self._entries: dict[int, list[Any]] = {}   # key -> [category, nbytes]
        self._keys = WeakIdKeyDictionary()          # storage -> key
        self._ids = itertools.count()
        self._hooks: list[Any] = []

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _free(self, key: int) -> None:
        cat, nbytes = self._entries.pop(key)
        self.live[cat] -= nbytes

    def _add(self, t: Tensor, category: str) -> None:
        st = t.untyped_storage()
        key = self._keys.get(st)
        if key is not None:
            return
        key = next(self._ids)
        self._keys[st] = key
        nbytes = st.nbytes()
        self._entries[key] = [category, nbytes]
        self.live[category] += nbytes
        weakref.finalize(st, self._free, key)

    def relabel(self, t: Tensor, category: str) -> None:
        """Count ``t``'s storage under ``category`` from now on (tracking it if it is new)."""
        key = self._keys.get(t.untyped_storage())
        if key is None:
            self._add(t, category)
            return
        entry = self._entries[key]
        self.live[entry[0]] -= entry[1]
        self.live[category] += entry[1]
        entry[0] = category

    def track(self, tensors: Iterable[Tensor], category: str) -> None:
        """Count pre-existing ``tensors`` (parameters, buffers, inputs, optimiser state) under ``category``."""
        for t in tensors:
            if isinstance(t, Tensor):
                self._add(t, category)
        self._check_peak()

    def track_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Relabel each parameter's gradient "grads" once accumulated (removed by :meth:`remove_hooks`)."""
        for p in params:
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(lambda q: self.relabel(q.grad, "grads")))

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def total(self) -> int:
        return sum(self.live.values())

    def _check_peak(self) -> None:
        now = self.total()
        if now > self.peak:
            self.peak, self.peak_at, self.peak_phase = now, {k: v for k, v in self.live.items() if v}, self.phase

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return _meta_scalar(args[0])
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._add(t, self.phase)
        self._check_peak()
        return out


def _meta_scalar(t: Tensor) -> bool | float:
    """``.item()`` of a meta tensor (no data): a boolean reads True — masks are full, as for real images and
    every mask the estimate builds — a float 1.0 (a finite loss or norm); an integer cannot be guessed."""
    if t.dtype == torch.bool:
        return True
    if t.is_floating_point():
        return 1.0
    raise RuntimeError(f"the memory estimate cannot run an integer .item() ({t.dtype}) on meta tensors: "
                       "the code's control flow depends on data")


def _meta_masks() -> Any:
    """Boolean-mask indexing on meta assumes every element selected (SmolVLM's patch mask over a full image: all
    patches are real). A partly-false mask would be over-counted, never under-counted."""
    from torch.fx.experimental import _config

    return _config.patch(meta_nonzero_assume_all_nonzero=True)


# -- meta copies and inputs ------------------------------------------------------------------------------------
def require_meta(module: nn.Module, what: str) -> nn.Module:
    """``module`` if every tensor of it is on ``meta``. No copy is made: the LeRobot adapters' deep copies
    *share* the frozen VLM, so moving a copy to meta would move the original's too."""
    bad = [(n, t.device) for n, t in itertools.chain(module.named_parameters(), module.named_buffers())
           if t.device.type != "meta"]
    if bad:
        raise ValueError(f"{what} must live on the meta device (build it with device='meta' or .to('meta') a "
                         f"disposable copy): {bad[0][0]} is on {bad[0][1]}")
    return module


def build_meta_agent(cfg: Any, policy: nn.Module, data: Any, critic: nn.Module | None = None) -> nn.Module:
    """The agent ``cfg.method`` builds (as the finetuner does) from a meta ``policy``, with the critic moved to
    meta too: v_θ, base and reference are meta copies, so nothing is allocated."""
    from trqam_sdk.methods.registry import get_method

    require_meta(policy, "the policy")
    with _CopiesAreEqual():
        return get_method(cfg.method).build(cfg, policy, data, critic).to("meta")


class _CopiesAreEqual(TorchDispatchMode):
    """``torch.equal`` of meta tensors (no data) compares shape and dtype: while the agent is built, the tensors
    compared are copies of one prior (``same_condition_as``: v_θ and the reference share the frozen prefix)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.equal.default and any(a.device.type == "meta" for a in args[:2]):
            a, b = args[:2]
            return a.shape == b.shape and a.dtype == b.dtype
        return func(*args, **(kwargs or {}))


def meta_like(tree: Any, batch: int) -> Any:
    """Every tensor of a (nested dict / list) batch as an empty meta tensor with leading dimension ``batch``."""
    if isinstance(tree, Tensor):
        return torch.empty((batch, *tree.shape[1:]), dtype=tree.dtype, device="meta")
    if isinstance(tree, dict):
        return {k: meta_like(v, batch) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(meta_like(v, batch) for v in tree)
    return tree


def _unique_bytes(tensors: Iterable[Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _report(tracker: LiveStorages, params: dict[str, int], extra: dict[str, Any]) -> dict[str, Any]:
    at = dict(tracker.peak_at)
    activations = at.get("forward", 0) + at.get("backward", 0)
    return {"peak_bytes": tracker.peak, "peak_gib": round(tracker.peak / GIB, 3), "peak_phase": tracker.peak_phase,
            "params_trainable_bytes": params["trainable"], "params_frozen_bytes": params["frozen"],
            "breakdown_at_peak_gib": {k: round(v / GIB, 3) for k, v in sorted(at.items(), key=lambda kv: -kv[1])},
            "activations_at_peak_gib": round(activations / GIB, 3), **extra}


def _param_bytes(module: nn.Module) -> dict[str, int]:
    ps = list(module.parameters())
    return {"trainable": _unique_bytes(p for p in ps if p.requires_grad),
            "frozen": _unique_bytes(p for p in ps if not p.requires_grad)}


# -- the estimates ---------------------------------------------------------------------------------------------
def estimate_update_memory(agent: nn.Module, example_batch: dict[str, Any], batch: int, *, lr: float = 1e-4,
                           grad_clip: float | None = 1.0, steps: int = 2) -> dict[str, Any]:
    """Peak memory (bytes) of ``steps`` TRQAM updates at ``batch`` rows, as ``Finetuner.update`` runs them.

    ``agent``: a built agent on meta (:func:`build_meta_agent`); ``example_batch``: one real batch of the
    finetuner's shape (any row count; only shapes and dtypes are used). Adam (foreach) as the finetuner makes
    it; its state exists from the first step, so the second update is the steady state. Returns the peak,
    where it happened, the live bytes by category at the peak (params, grads, optimizer, forward = activations
    kept for the backward, backward = temporaries) and the steady-state sizes of gradients and optimiser state.
    """
    require_meta(agent, "the agent")
    params = [p for p in agent.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    data = meta_like(example_batch, batch)
    noise = {k: torch.empty(n.shape, device="meta") for k, n in agent.noise_spec(batch).items()}
    tracker = LiveStorages()
    tracker.track((p for p in agent.parameters() if p.requires_grad), "params_trainable")
    tracker.track((p for p in agent.parameters() if not p.requires_grad), "params_frozen")
    tracker.track(agent.buffers(), "buffers")
    tracker.track([*tree_flatten(data)[0], *noise.values()], "inputs")
    tracker.track_grads(params)
    start = tracker.total()
    try:
        with tracker, _meta_masks():
            for _ in range(steps):
                agent.train()
                tracker.phase = "forward"
                loss, _metrics = agent(data, noise)
                del _metrics
                tracker.phase = "backward"
                opt.zero_grad(set_to_none=True)
                loss.backward()
                del loss
                tracker.phase = "optimizer"
                torch.nn.utils.clip_grad_norm_(params, float("inf") if grad_clip is None else grad_clip)
                opt.step()
                tracker.phase = "targets"
                if hasattr(agent, "update_targets"):
                    agent.update_targets()
    finally:
        tracker.remove_hooks()
    grads = _unique_bytes(p.grad for p in params if p.grad is not None)
    state = _unique_bytes(t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor) and t.ndim)
    return _report(tracker, _param_bytes(agent), {"batch": batch, "steps": steps, "start_bytes": start,
                                                  "grads_bytes": grads, "optimizer_state_bytes": state})


def estimate_sample_memory(policy: nn.Module, example_obs: dict[str, Any], batch: int,
                           flow_steps: int = 10) -> dict[str, Any]:
    """Peak memory of ``policy.sample`` (one chunk: the prefix, then ``flow_steps`` expert passes, no grad)."""
    require_meta(policy, "the policy")
    obs = meta_like(example_obs, batch)
    tracker = LiveStorages()
    tracker.track((p for p in policy.parameters() if p.requires_grad), "params_trainable")
    tracker.track((p for p in policy.parameters() if not p.requires_grad), "params_frozen")
    tracker.track(policy.buffers(), "buffers")
    tracker.track(tree_flatten(obs)[0], "inputs")
    tracker.phase = "forward"
    start = tracker.total()
    with tracker, torch.no_grad(), _meta_masks():
        policy.eval()
        policy.sample(obs, flow_steps)
    return _report(tracker, _param_bytes(policy), {"batch": batch, "flow_steps": flow_steps, "start_bytes": start})


# -- measurement, to validate the estimate -------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_peak(fn: Callable[[], Any], existing: Iterable[Any] = (), interval_s: float = 0.002) -> dict[str, int]:
    """Run ``fn`` on real tensors and measure its peak memory two ways, both relative to before the call:

    * ``allocated``: peak live bytes of the tensors it creates (:class:`LiveStorages` on real CPU tensors —
      the accounting of the estimate, so estimate vs this isolates the meta path). Pass the modules and tensors
      that already exist as ``existing`` (parameters, buffers, the batch): a view of one of them (``weight.t()``)
      is then not counted as new;
    * ``rss``: the growth of the process's resident set size, sampled every ``interval_s`` by a thread (Linux
      ``/proc``), which also counts the allocator's caching and everything else the process touches.
    """
    tracker = LiveStorages()
    for obj in existing:
        if isinstance(obj, nn.Module):
            tracker.track(itertools.chain(obj.parameters(), obj.buffers()), "existing")
        else:
            tracker.track(tree_flatten(obj)[0], "existing")
    start = tracker.total()
    tracker.peak = start
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        with tracker:
            fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return {"allocated": tracker.peak - start, "rss": peak[0] - base}
