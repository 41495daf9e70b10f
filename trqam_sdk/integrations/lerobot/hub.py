"""Hub round trip for fine-tuned LeRobot VLAs: a checkpoint lerobot loads as its own policy, plus our state.

Folder / repo layout (everything at the root, as lerobot expects):
  config.json, model.safetensors          the lerobot policy (LoRA merged), ``PI0Policy.from_pretrained`` loads it
  policy_preprocessor.json, policy_postprocessor.json (+ their *.safetensors statistics)   lerobot's processors
  trqam_state.json                         ε, final λ, KL curve, results, the FinetuneConfig
  README.md                                model card: base model, ε, final λ, KL curve, results
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from trqam_sdk.adapters.lerobot import LeRobotFlowPolicy
from trqam_sdk.io import read_jsonl

STATE_FILE = "trqam_state.json"


def training_summary(finetuner: Any, results: dict[str, Any] | None = None,
                     base_model: str | None = None) -> dict[str, Any]:
    """ε, final λ, KL curve (from the run's metrics.jsonl) and results of a :class:`Finetuner` run."""
    from trqam_sdk.config import to_dict

    cfg, agent = finetuner.cfg, finetuner.agent
    names = {"step": "step", "path_kl": "actor/path_kl", "kl_ema": "dual/kl_ema", "lam": "dual/lam"}
    curve = [{short: row[key] for short, key in names.items() if key in row}
             for row in read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")]
    lam, kl_ema = getattr(agent, "lam", None), getattr(agent, "kl_ema", None)  # None: a method without a dual
    return {"base_model": base_model, "method": cfg.method, "kl_budget": cfg.trust_region.kl_budget,
            "final_lambda": None if lam is None else float(lam),
            "final_kl_ema": None if kl_ema is None else float(kl_ema), "steps": finetuner.step,
            "kl_curve": curve, "results": results or {}, "config": to_dict(cfg)}


def model_card(policy: LeRobotFlowPolicy, summary: dict[str, Any], repo_id: str | None = None) -> str:
    """A Hub model card (YAML metadata + markdown) describing the fine-tune."""
    from huggingface_hub import ModelCard, ModelCardData

    base = summary.get("base_model")
    data = ModelCardData(library_name="lerobot", pipeline_tag="robotics", license="apache-2.0",
                         base_model=base or None, tags=["lerobot", "robotics", "trqam", policy.lerobot_type])
    curve = summary.get("kl_curve", [])
    rows = "\n".join(f"| {r.get('step')} | {r.get('path_kl', float('nan')):.4g} | {r.get('kl_ema', float('nan')):.4g} "
                     f"| {r.get('lam', float('nan')):.4g} |" for r in curve[-20:])
    lam, kl = summary.get("final_lambda", float("nan")), summary.get("final_kl_ema", float("nan"))
    lam, kl = (float("nan") if v is None else v for v in (lam, kl))  # None: the method has no λ
    results = "\n".join(f"- **{k}**: {v}" for k, v in summary.get("results", {}).items()) or "- (none reported)"
    method = summary.get("method")
    name = "TRQAM" if method in (None, "trqam", "qam", "qam_ext_kl") else str(method)  # the card's wording
    algo = ("**TRQAM** (Trust Region Q-Adjoint Matching," if name == "TRQAM"
            else f"**{name}** (a baseline of the QAM paper,")
    content = f"""---
{data.to_yaml()}
---

# {repo_id or name + ' fine-tuned ' + policy.lerobot_type}

A LeRobot `{policy.lerobot_type}` policy fine-tuned off-policy with {algo}
trqam-sdk). It loads in lerobot as its own policy (`{type(policy.policy).__name__}.from_pretrained`) and in the
SDK with `trqam_sdk.adapters.lerobot.from_pretrained`.

- Base model: {base or 'not recorded'}
- Method: {summary.get('method')}, steps: {summary.get('steps')}
- KL budget ε: {summary.get('kl_budget')}
- Final λ: {lam:.4g}, final KL EMA: {kl:.4g}

## Results
{results}

## KL curve (last {min(len(curve), 20)} logged steps)
| step | path KL | KL EMA | λ |
|---|---|---|---|
{rows}

Full training state: `{STATE_FILE}`.
"""
    return str(ModelCard(content))


def save_pretrained(policy: LeRobotFlowPolicy, directory: str | Path, summary: dict[str, Any] | None = None,
                    repo_id: str | None = None) -> Path:
    """Write the lerobot checkpoint, the processors, ``trqam_state.json`` and the model card to ``directory``."""
    if not isinstance(policy, LeRobotFlowPolicy):
        raise TypeError(f"save_pretrained expects a LeRobot adapter, got {type(policy).__name__}")
    if Path(directory).exists() and not Path(directory).is_dir():
        raise NotADirectoryError(f"{directory} is a file: save_pretrained writes a checkpoint folder there")
    directory = policy.save_pretrained(directory)
    summary = summary or {}
    (directory / STATE_FILE).write_text(json.dumps(summary, indent=2, default=str))
    (directory / "README.md").write_text(model_card(policy, summary, repo_id))
    return directory


def push_to_hub(policy: LeRobotFlowPolicy, repo_id: str, summary: dict[str, Any] | None = None, *,
                private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload TRQAM fine-tuned policy") -> Any:
    """Save to a temporary folder and upload every file of it as one ``HfApi.create_commit``."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:  # before the (slow) save, and with the id in the message
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"push_to_hub: {repo_id!r} is not a Hub repo id ('name' or 'namespace/name'): {e}") from e
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(policy, tmp, summary, repo_id)
        operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                      for p in sorted(folder.rglob("*")) if p.is_file()]
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                 repo_type="model")
