"""The fine-tuning stages of ``trqam metaworld``: offline on the LeRobotDataset, then online in the env, resumable.

The finetuner checkpoints every ``finetune.checkpoint_every`` updates (the online phase's replay buffer with it,
incrementally); a re-run resumes from the newest checkpoint. The offline phase ends with an evaluation stored in
``offline.json``; the online phase runs ``online_steps`` environment steps with ``utd`` updates each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trqam_sdk.benchmarks.metaworld import common as P
from trqam_sdk.benchmarks.metaworld.recipe import MetaWorldRecipe
from trqam_sdk.benchmarks.metaworld.stages import measure, read_stage, write_stage
from trqam_sdk.benchmarks.runner import headline
from trqam_sdk.config import to_dict
from trqam_sdk.io import append_jsonl, read_jsonl, write_jsonl


def offline_data(recipe: MetaWorldRecipe, root: Path, vla: Any) -> Any:
    """The dataset as Transitions (model observations, uint8 images) with the recipe's reward source's rewards
    and terminations (relabelled from each transition's next frame)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from trqam_sdk.integrations.lerobot.data import lerobot_transitions
    from trqam_sdk.rewards import relabel_transitions

    ds = LeRobotDataset(P.repo_id(recipe), root=str(root / "data"))
    data = lerobot_transitions(ds, vla.preprocessor)
    return relabel_transitions(data, ds, P.reward_source(recipe, root))


def finetune(recipe: MetaWorldRecipe, method: str, seed: int, root: Path, rdir: Path, prior_folder: Path,
             prior_res: dict[str, Any], seconds: dict[str, Any], progress: bool) -> dict[str, Any]:
    from trqam_sdk.integrations.lerobot.hub import save_pretrained, training_summary
    from trqam_sdk.networks.encoders import vla_critic
    from trqam_sdk.training.finetuner import Finetuner

    cfg = recipe.finetune_config(method, seed, str(rdir))
    vla = P.load_vla(prior_folder, recipe.prior.kind)
    with measure(seconds, "load_data"):
        data = offline_data(recipe, root, vla)
    c = cfg.critic
    torch.manual_seed(cfg.seed)  # the critic's init is part of the run
    ft = Finetuner(cfg, vla, data, critic=vla_critic(vla, c.num_critics, c.width, c.depth, layer_norm=c.layer_norm),
                   on_existing="auto")  # the stage files say whether the run is finished
    resumed = ft.resumed_from is not None
    if not resumed:
        (rdir / "metrics.jsonl").unlink(missing_ok=True)
        write_jsonl(rdir / "evals.jsonl", [{"step": 0, "phase": "prior", **prior_res}])
    out: dict[str, Any] = {"transitions": len(data), "resumed_from_step": ft.step if resumed else None}

    def log_eval(step: int, res: dict[str, Any], phase: str) -> None:
        if any(r["step"] == step and r["phase"] == phase for r in read_jsonl(rdir / "evals.jsonl")):
            return  # a kill between this row and its stage file: the re-run evaluates again, logs once
        append_jsonl(rdir / "evals.jsonl", {"step": step, "phase": phase, **res})

    # offline
    spec = {"finetune": to_dict(cfg), "offline_steps": recipe.offline_steps, "eval": to_dict(recipe.eval),
            "reward": to_dict(recipe.reward)}
    offline = read_stage(rdir / "offline.json", spec)
    if offline is None:
        with measure(seconds, "offline"):
            if ft.step < recipe.offline_steps:
                ft.train(steps=recipe.offline_steps - ft.step, progress=progress)
        with measure(seconds, "offline_eval"):
            offline = P.sdk_eval(recipe, ft.agent.make_actor(seed), prior_folder, seed, f"eval {method} offline",
                                 progress)
        log_eval(ft.step, offline, "offline")
        write_stage(rdir / "offline.json", spec, offline)
    phases: dict[str, Any] = {"prior": prior_res, "offline": offline}
    last = offline
    if recipe.online_steps:
        from trqam_sdk.benchmarks.metaworld.online import online_phase

        # a stage of its own, as the offline one: a kill after it (in lerobot-eval) re-enters neither the online
        # phase (which would close its last episode as interrupted) nor its evaluation (logged twice)
        ospec = {**spec, "online_steps": recipe.online_steps, "utd": recipe.utd}
        online = read_stage(rdir / "online.json", ospec)
        if online is None:
            with measure(seconds, "online"):
                online_info = online_phase(recipe, ft, data, root, rdir, prior_folder, seed, progress)
            with measure(seconds, "online_eval"):
                res = P.sdk_eval(recipe, ft.agent.make_actor(seed), prior_folder, seed, f"eval {method} online",
                                 progress)
            log_eval(ft.step, res, "online")
            online = write_stage(rdir / "online.json", ospec, {"info": online_info, "eval": res, "cost": {
                k: seconds[k] for k in ("online", "online_eval")}})
        else:
            seconds.update({k: {**v, "cached": True} for k, v in online["cost"].items()})
        last = phases["online"] = online["eval"]
        out.update(online["info"])
    summary = training_summary(ft, results={"success": last["success_rate"]}, base_model=str(prior_folder))
    policy_dir = save_pretrained(ft.agent.policy, rdir / "policy", summary)
    ft.end()
    t0 = time.perf_counter()
    with measure(seconds, "lerobot_eval"):
        le = P.lerobot_eval(recipe, Path(policy_dir), seed, rdir / "lerobot_eval", progress)
    if le is not None:
        le["seconds"] = time.perf_counter() - t0
        out["lerobot_eval"] = le
    out.update(headline(last), phases=phases, steps=ft.step, policy=str(policy_dir))
    if getattr(ft.agent, "lam", None) is not None:
        out.update(kl_ema=float(ft.agent.kl_ema), lam=float(ft.agent.lam), kl_budget=cfg.trust_region.kl_budget)
    return out
