"""Checkpoints as safetensors + JSON only, written atomically (temp folder → rename → pointer file).

Layout of ``<run>/checkpoints/step-00001000/``:
  agent.safetensors      every module and buffer of the agent (v_θ, base, reference, critics, λ, D̄)
  optimizer.safetensors  Adam moments and step counts, keyed ``state.<param index>.<name>``
  state.json             step, config, optimiser hyper-parameters, counters
  policy/                v_θ alone (config.json + model.safetensors), loadable by ``adapters.load_policy``
and ``<run>/checkpoints/latest.json`` names the newest complete one. Randomness is a pure function of
(seed, step), so no RNG state is needed to resume exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trqam_sdk.adapters.base import check_state_dict
from trqam_sdk.io import atomic_write_text


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (for safetensors) and JSON-able hyper-parameters."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    have = sum(len(g["params"]) for g in optimizer.state_dict()["param_groups"])
    want = sum(len(g["params"]) for g in groups)
    if have != want:
        raise ValueError(f"optimizer checkpoint has {want} parameters, the model has {have}: mismatched checkpoint")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors for safetensors; tensors that share storage (a frozen VLM shared by v_θ, base and reference)
    are cloned, since safetensors refuses aliases — every key still loads strictly."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        if ptr is not None:
            seen.add(ptr)
    return out


def save_checkpoint(run_dir: str | Path, step: int, agent: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-XXXXXXXX`` atomically and point ``latest.json`` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_unshared(agent.state_dict()), str(tmp / "agent.safetensors"))
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": opt_meta}, indent=2))
    agent.actor.save_pretrained(tmp / "policy")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest.json", json.dumps({"step": step, "path": final.name}))
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    return pointer.parent / json.loads(pointer.read_text())["path"]


def load_checkpoint(path: str | Path, agent: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore agent (and optimiser) in place; return state.json. Mismatches raise naming the tensors."""
    path = Path(path)
    for name in ("agent.safetensors", "state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    tensors = load_file(str(path / "agent.safetensors"))
    check_state_dict(agent, tensors, f"checkpoint {path} does not match this model")
    agent.load_state_dict(tensors)
    state = json.loads((path / "state.json").read_text())
    if optimizer is not None:
        load_optimizer_tensors(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    return state
