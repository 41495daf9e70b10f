"""The flow-policy protocol every adapter implements.

A flow policy is a velocity field ``v(cond, x_t, t)`` in the SDK convention (t = 0 noise → t = 1 action,
x_t = (1 - t) x0 + t x1, v ≈ x1 - x0) over a flattened action chunk of ``H*A`` dims, an :class:`ActionSpec`,
and ``condition(obs)``: everything that depends only on the state (a VLA's vision-language prefix / KV
cache), computed once per state and reused for every flow step and every VJP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trqam_sdk.core.pytree import Cond, first_leaf, repeat_condition, tree_map  # noqa: F401  (re-exported)
from trqam_sdk.io import read_json, read_safetensors


@dataclass(frozen=True)
class ActionSpec:
    """Chunk length H, per-step action dim A and the box every action lives in."""

    horizon: int
    action_dim: int
    low: float = -1.0
    high: float = 1.0

    @property
    def flat_dim(self) -> int:
        return self.horizon * self.action_dim

    def validate_chunk(self, actions: Tensor, name: str = "actions") -> None:
        """Raise a clear error on wrong shape, non-finite rows or out-of-box actions."""
        want = (self.horizon, self.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != want:
            raise ValueError(f"{name}: expected shape (B, {want[0]}, {want[1]}), got {tuple(actions.shape)}")
        bad = ~torch.isfinite(actions).flatten(1).all(dim=1)
        if bad.any():
            raise ValueError(f"{name}: {int(bad.sum())} rows contain NaN/inf (first row {int(bad.nonzero()[0])})")
        lo, hi = float(actions.min()), float(actions.max())
        if lo < self.low - 1e-6 or hi > self.high + 1e-6:
            raise ValueError(f"{name}: values in [{lo:.4g}, {hi:.4g}] fall outside [{self.low}, {self.high}]")


ADAPTERS: dict[str, type[FlowPolicy]] = {}


class FlowPolicy(nn.Module):
    """Base class of every adapter. Subclasses set ``spec``, ``config`` and implement the two methods."""

    type_name: ClassVar[str] = ""
    spec: ActionSpec

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.type_name:
            ADAPTERS[cls.type_name] = cls

    def condition(self, obs: Tensor | dict[str, Tensor]) -> Cond:
        """Everything that depends on the state only; computed once per state."""
        raise NotImplementedError

    def velocity(self, cond: Cond, x: Tensor, t: Tensor) -> Tensor:
        """Velocity (B, H*A) at flattened chunk x (B, H*A) and flow time t (B,), SDK convention."""
        raise NotImplementedError

    def same_condition_as(self, other: FlowPolicy) -> bool:
        """True if ``other.condition(obs)`` always equals ``self.condition(obs)`` (e.g. the same frozen prefix),
        so a caller may compute it once for both. Conservative default: False."""
        return False

    def velocity_fn(self, cond: Cond) -> Callable[[Tensor, Tensor], Tensor]:
        """Close over a computed condition: the callable the samplers and the adjoint consume."""
        return lambda x, t: self.velocity(cond, x, t)

    @torch.no_grad()
    def draw_noise(self, obs: Any, generator: torch.Generator | None = None, *lead: int) -> Tensor:
        """N(0, I) noise of shape (*lead, B, H·A) for the batch of ``obs`` (a tensor or a VLA's dict), drawn on the
        CPU from ``generator`` and then moved to the observations' device, so a seeded draw is the same on any
        device. Every acting path draws its noise here."""
        first = first_leaf(obs)
        return torch.randn(*lead, first.shape[0], self.spec.flat_dim, generator=generator).to(first.device)

    def sample(self, obs: Tensor, flow_steps: int = 10, generator: torch.Generator | None = None) -> Tensor:
        """Act: Euler ODE sample from N(0, I) at t = 0 to t = 1, clipped to the box, as (B, H, A) chunks."""
        from trqam_sdk.core.flow import sample_ode

        cond = self.condition(obs)
        x = sample_ode(self.velocity_fn(cond), self.draw_noise(obs, generator), flow_steps)
        return x.clamp(self.spec.low, self.spec.high).view(-1, self.spec.horizon, self.spec.action_dim)

    # -- serialisation: config.json + model.safetensors (no pickles) -----------------------------------
    def get_config(self) -> dict[str, Any]:
        cfg = getattr(self, "config", None)
        if cfg is None:
            raise NotImplementedError(f"{type(self).__name__} has no `config` to serialise")
        return asdict(cfg) if not isinstance(cfg, dict) else dict(cfg)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowPolicy:
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"adapter": self.type_name, "config": self.get_config()}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, revision: str | None = None) -> FlowPolicy:
        """:func:`load_policy`, checked to give this class (a folder holding another adapter is an error)."""
        policy = load_policy(path_or_repo, revision)
        if not isinstance(policy, cls):
            raise ValueError(f"{path_or_repo} holds a {type(policy).__name__} ({policy.type_name!r} adapter), "
                             f"not a {cls.__name__}")
        return policy


def check_state_dict(module: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    """Raise ``ValueError(what: ...)`` naming missing, unexpected and wrongly shaped tensors."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")


def resolve_folder(path_or_repo: str | Path, revision: str | None = None, what: str = "policy folder") -> Path:
    """The local folder ``path_or_repo`` names, or the Hub snapshot of it as a repo id. Local paths are checked
    first, so a mistyped local path fails as "not found" instead of as a Hub error about repo-id syntax; a name
    that could be a repo id and is not local fails naming both lookups."""
    text = str(path_or_repo)
    if not text.strip():
        raise ValueError(f"{what}: an empty path")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file, not a {what} (a folder with config.json and model.safetensors)")
    if not _could_be_repo_id(text):
        raise FileNotFoundError(f"{what} not found: {text}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision))
    except Exception as e:  # offline, unknown repo, no access, network: all say the same to the user
        cause = " ".join(str(e).split()) or type(e).__name__
        raise FileNotFoundError(f"no local folder {text}, and the Hub lookup of repo id {text} failed: "
                                f"{type(e).__name__}: {cause}") from e


def _could_be_repo_id(text: str) -> bool:
    """Whether ``text`` could be a Hub repo id (``name`` or ``namespace/name``): one '/' at most, no leading
    '.', '/' or '~', no other path pieces, and the Hub's own character rules."""
    if text.count("/") > 1 or text.startswith((".", "/", "~")):
        return False
    pieces = {"\\", "..", ":", os.sep} | ({os.altsep} if os.altsep else set())
    if any(p in text for p in pieces - {"/"}):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def read_config_json(folder: Path, what: str) -> dict[str, Any]:
    """``folder/config.json`` as a mapping; missing, corrupt or non-mapping files are errors naming the file."""
    file = folder / "config.json"
    meta = read_json(file, f"{what} config")
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: expected a JSON object (a {what} config), got a {type(meta).__name__}")
    return meta


def load_policy(path_or_repo: str | Path, revision: str | None = None) -> FlowPolicy:
    """Load an adapter saved by :meth:`FlowPolicy.save_pretrained` from a folder or a Hub repo id (a local path
    is always looked up locally first). Every missing or corrupt file is an error naming the file."""
    path = resolve_folder(path_or_repo, revision)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name}: not a trqam-sdk policy folder")
    meta = read_config_json(path, "policy")
    if "adapter" not in meta and "type" in meta:  # a LeRobot checkpoint (pi0, pi05, smolvla)
        from trqam_sdk.adapters.lerobot import from_pretrained

        return from_pretrained(path)
    file = path / "config.json"
    if "adapter" not in meta:
        raise ValueError(f"{file} names no adapter (no 'adapter' key, keys {sorted(meta)[:8]}): not a trqam-sdk "
                         "policy config")
    kind = meta["adapter"]
    if not isinstance(kind, str) or kind not in ADAPTERS:
        raise ValueError(f"{file} names adapter {kind!r}; known: {sorted(ADAPTERS)} (an adapter "
                         "from outside the SDK is known once its module is imported: `trqam --plugin MODULE`)")
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{file}: 'config' must be a JSON object of {kind!r} adapter options, got "
                         f"{type(config).__name__}")
    try:
        policy = ADAPTERS[kind].from_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{file}: its 'config' does not build a {kind!r} adapter: {e}") from e
    state = read_safetensors(path / "model.safetensors", "policy weights file")
    check_state_dict(policy, state, f"checkpoint {path} does not match {kind}")
    policy.load_state_dict(state)
    return policy
