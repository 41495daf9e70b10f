"""Checkpoints as safetensors + JSON only, split by owner, written atomically (temp folder → rename → pointer).

Layout of ``<run>/checkpoints/step-00001000/``:
  policy/                  the fine-tuned policy alone (its adapter's ``save_pretrained``), loadable on its own
  algorithm.safetensors    what the method owns (critics, targets, λ, D̄, a base / reference where it trains);
                           never the policy, nor a frozen module it shares with the policy (training/ownership.py)
  optimizer.safetensors    Adam moments and step counts, keyed ``state.<param index>.<name>``
  state.json               step, config, optimiser hyper-parameters, counters, fingerprints of rebuilt copies
and ``<run>/checkpoints/latest.json`` names the newest complete one. Randomness is a pure function of
(seed, step), so no RNG state is needed to resume exactly.

A save is written into ``.tmp-step-N-<pid>`` (state.json last) and renamed in; re-saving an existing step renames the
old folder aside (``.old-step-N-<pid>``), renames the new one in, then deletes the old: a kill at any point leaves
either folder complete under a name :func:`trqam_sdk.training.rundir.scan_checkpoints` finds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from trqam_sdk.adapters.base import check_state_dict
from trqam_sdk.io import atomic_write_text, read_json, read_safetensors
from trqam_sdk.methods.base import Agent
from trqam_sdk.training.ownership import check_fingerprint, fingerprint, policy_save_is_exact, split_state
from trqam_sdk.training.rundir import scan_checkpoints


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


def unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors for safetensors (which refuses aliases): any two keys that still share storage are cloned."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        if ptr is not None:
            seen.add(ptr)
    return out


def save_checkpoint(run_dir: str | Path, step: int, agent: Agent, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-XXXXXXXX`` atomically and point ``latest.json`` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    own, rebuilt = split_state(agent)
    save_file(unshared(own), str(tmp / "algorithm.safetensors"))
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    agent.policy.save_pretrained(tmp / "policy")
    meta = {**state, "step": step, "optimizer": opt_meta, "method": agent.method_name,
            "rebuilt_fingerprint": fingerprint(agent, rebuilt)}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))  # last: its presence marks the folder complete
    if final.exists():  # re-save: swap, then delete the old one
        old = root / f".old-step-{step:08d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    atomic_write_text(root / "latest.json", json.dumps({"step": step, "path": final.name}))
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (found by scanning, so a missing ``latest.json`` is no
    obstacle), or None."""
    return scan_checkpoints(run_dir).newest


def _load_policy(agent: Agent, folder: Path) -> None:
    """Restore the policy's tensors from the checkpoint's ``policy/`` folder (an exact save)."""
    policy = agent.policy
    loader = getattr(policy, "load_saved_weights", None)
    if loader is not None:
        loader(folder)
        return
    file = folder / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {folder.parent} is incomplete: policy/model.safetensors is missing")
    tensors = read_safetensors(file, "policy weights file")
    check_state_dict(policy, tensors, f"{file} does not match this policy")
    policy.load_state_dict(tensors)


def load_checkpoint(path: str | Path, agent: Agent, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore agent (and optimiser) in place; return state.json. Mismatches raise naming the file and tensors."""
    path = Path(path)
    for name in ("algorithm.safetensors", "state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    state = read_json(path / "state.json", "checkpoint state")
    own, _ = split_state(agent)
    if policy_save_is_exact(agent):
        _load_policy(agent, path / "policy")
    file = path / "algorithm.safetensors"
    tensors = read_safetensors(file, "checkpoint algorithm file")
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{file} does not match this {agent.method_name} agent: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    agent.load_state_dict(tensors, strict=False)
    check_fingerprint(state.get("rebuilt_fingerprint", {}), agent, f"checkpoint {path}")
    if optimizer is not None:
        tensors = read_safetensors(path / "optimizer.safetensors", "checkpoint optimizer file")
        load_optimizer_tensors(optimizer, tensors, state["optimizer"])
    return state
