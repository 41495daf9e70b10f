"""Train a random-init VLA prior with LeRobot's own ``lerobot-train``, as a subprocess driven from Python.

The prior must be an *ordinary* LeRobot checkpoint (what a user downloads from the Hub), so LeRobot's train loop
does all the work: :func:`train_prior` only builds the command line, streams its output and manages resuming.

* SmolVLA reads its VLM config from ``vlm_model_name``: a local SmolVLM folder (:data:`SMOLVLM_SIZES`) is
  written to ``out_dir/vlm`` and trained from random init (``load_vlm_weights=false``; VLM and vision tower
  trainable — a frozen random backbone would be useless). The checkpoint names that folder: keep ``out_dir``.
* pi0 / pi0.5 name their sizes by variant, so a small one only exists inside
  :func:`~trqam_sdk.testing.tiny_lerobot.tiny_pi_architecture`: the command is then
  ``python -m trqam_sdk.integrations.lerobot.prior --tiny-pi --tokenizer DIR train -- <lerobot-train args>``,
  which enters that context and calls LeRobot's ``lerobot_train.main()`` (still LeRobot's train()). The saved
  pre-processor names the local tokenizer, so loading the checkpoint later only needs ``tiny_pi_architecture``.
* Normalisation: ACTION MIN_MAX (normalised actions in [-1, 1], the SDK's box), STATE MEAN_STD, VISUAL
  IDENTITY; images are resized to the dataset's size, not 512 / 224.

Resuming (``out_dir`` layout: ``prior_spec.json``, ``lerobot-train.log``, ``vlm/`` or ``tokenizer/``,
``lerobot/`` = LeRobot's output_dir): a finished run with the same spec is returned as is; a run with a
checkpoint continues with LeRobot's own ``--resume=true --config_path=…/train_config.json``; a run that died
before its first checkpoint is deleted and restarted (LeRobot refuses an existing output_dir without resume);
a different spec is refused. Once finished, only the final checkpoint is kept (:func:`prune_checkpoints`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trqam_sdk.io import atomic_write_text

PRIOR_KINDS = ("smolvla", "pi0")  # pi0.5 would want STATE MIN_MAX (it bins the state into the prompt): untested
SIZES = ("tiny", "cpu")
SPEC_FILE, LOG_FILE, RUN_DIR = "prior_spec.json", "lerobot-train.log", "lerobot"
IMAGE_KEY = "observation.image"
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
NORM_MAP = {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MIN_MAX"}
CHECKPOINT_FILES = ("pretrained_model/config.json", "pretrained_model/model.safetensors",
                    "pretrained_model/train_config.json", "pretrained_model/policy_preprocessor.json",
                    "pretrained_model/policy_postprocessor.json", "training_state/training_step.json",
                    "training_state/scheduler_state.json")  # lerobot writes scheduler_state.json last
TAIL_LINES = 40


def dataset_image_size(dataset_root: Path) -> int:
    """The square image size of the dataset's ``observation.image`` feature (from ``meta/info.json``)."""
    info_path = Path(dataset_root) / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: {dataset_root} is not a local LeRobotDataset (v3)")
    features = json.loads(info_path.read_text()).get("features", {})
    if IMAGE_KEY not in features:
        raise KeyError(f"{info_path}: no {IMAGE_KEY!r} feature (has {sorted(features)}); the MetaWorld prior "
                       "reads one camera named observation.image")
    shape = features[IMAGE_KEY]["shape"]
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise ValueError(f"{info_path}: {IMAGE_KEY} has shape {shape}, expected (S, S, 3)")
    return int(shape[0])


def prior_spec(kind: str, dataset_root: Path, repo_id: str, *, steps: int, batch_size: int, chunk_size: int,
               size: str, seed: int, lr: float | None, save_freq: int | None) -> dict[str, Any]:
    """What identifies a prior: the arguments plus the dataset's size (a regenerated dataset is a new prior)."""
    info = json.loads((Path(dataset_root) / "meta" / "info.json").read_text())
    return {"kind": kind, "dataset_root": str(Path(dataset_root).resolve()), "repo_id": repo_id, "steps": steps,
            "batch_size": batch_size, "chunk_size": chunk_size, "size": size, "seed": seed, "lr": lr,
            "save_freq": save_freq, "image_size": dataset_image_size(dataset_root),
            "dataset_frames": info.get("total_frames"), "dataset_episodes": info.get("total_episodes")}


def checkpoint_step(ckpt: Path) -> int:
    """The training step a LeRobot checkpoint folder (``checkpoints/<step>``) was saved at."""
    return int(json.loads((ckpt / "training_state" / "training_step.json").read_text())["step"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a lerobot-train output_dir: ``checkpoints/last`` when it is complete
    (lerobot points it there only after a save finished), else the highest complete numbered folder."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    complete = [d for d in root.iterdir() if d.is_dir() and all((d / f).is_file() for f in CHECKPOINT_FILES)]
    if not complete:
        return None
    best = max(complete, key=checkpoint_step)
    last = root / "last"
    if last.is_symlink() and last in complete and checkpoint_step(last) == checkpoint_step(best):
        return last
    return best


def lerobot_train_args(kind: str, dataset_root: Path, repo_id: str, run_dir: Path, model_dir: Path, *,
                       steps: int, batch_size: int, chunk_size: int, size: str, image_size: int, seed: int,
                       lr: float | None, save_freq: int, log_freq: int) -> list[str]:
    """The ``lerobot-train`` arguments of a fresh run (every one a documented LeRobot config field)."""
    from trqam_sdk.testing.tiny_lerobot import SMOLVLM_SIZES

    args = [f"--dataset.repo_id={repo_id}", f"--dataset.root={Path(dataset_root).resolve()}",
            f"--policy.type={kind}", "--policy.device=cpu", "--policy.push_to_hub=false",
            f"--policy.chunk_size={chunk_size}", f"--policy.n_action_steps={chunk_size}",
            f"--policy.normalization_mapping={json.dumps(NORM_MAP)}",
            f"--steps={steps}", f"--batch_size={batch_size}", "--num_workers=0", f"--save_freq={save_freq}",
            f"--log_freq={log_freq}", f"--seed={seed}", "--wandb.enable=false", f"--output_dir={run_dir}"]
    if lr is not None:  # the policy's training preset builds the optimizer and schedule from optimizer_lr
        args.append(f"--policy.optimizer_lr={lr}")
    if kind == "smolvla":
        layers = SMOLVLM_SIZES[size][0]["num_hidden_layers"]
        args += [f"--policy.vlm_model_name={model_dir}", "--policy.load_vlm_weights=false",
                 f"--policy.num_vlm_layers={layers}", f"--policy.resize_imgs_with_padding=[{image_size}, {image_size}]",
                 "--policy.train_expert_only=false", "--policy.freeze_vision_encoder=false"]
    else:
        args += [f"--policy.image_resolution=[{image_size}, {image_size}]", "--policy.dtype=float32",
                 "--policy.train_expert_only=false", "--policy.freeze_vision_encoder=false"]
    return args


def lerobot_command(script: str, args: Sequence[str], tokenizer: Path | None = None,
                    tiny_pi: bool = False) -> list[str]:
    """The command that runs LeRobot's ``script`` ("train" or "eval"): its console script, or this module's
    ``--tiny-pi`` wrapper around the same entry point (pi0 / pi0.5 at tiny sizes)."""
    if not tiny_pi:
        exe = Path(sys.executable).with_name(f"lerobot-{script}")
        return [str(exe) if exe.is_file() else f"lerobot-{script}", *args]
    cmd = [sys.executable, "-m", "trqam_sdk.integrations.lerobot.prior", "--tiny-pi"]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    return [*cmd, script, "--", *args]


def run_logged(cmd: Sequence[str], log_path: Path, progress: bool = True, what: str = "lerobot") -> float:
    """Run ``cmd``, streaming its output to the console (``progress``) and appending it to ``log_path``
    (always); returns the wall seconds. On failure raise with the command and the log's last lines."""
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on the Hub
    env.setdefault("PYTHONUNBUFFERED", "1")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        pending = b""
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                if progress:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                pending += chunk
                *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
                tail.extend(line.decode(errors="replace") for line in lines if line.strip())
        except BaseException:
            proc.kill()
            raise
        finally:
            rc = proc.wait()
    if pending.strip():
        tail.append(pending.decode(errors="replace"))
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit code {rc}).\ncommand: {' '.join(cmd)}\nlog: {log_path}\n"
                           f"last lines:\n" + "\n".join(tail))
    return time.perf_counter() - start


def _build_model_dir(kind: str, out_dir: Path, size: str, image_size: int) -> Path:
    """The local SmolVLM config folder (smolvla) or tokenizer (pi0 / pi0.5), written once, atomically."""
    from trqam_sdk.testing.tiny_lerobot import build_smolvlm, build_tokenizer, metaworld_words

    final = out_dir / ("vlm" if kind == "smolvla" else "tokenizer")
    if final.is_dir():
        return final
    tmp = out_dir / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "smolvla":
        build_smolvlm(tmp, size, image_size, metaworld_words())
    else:
        build_tokenizer(tmp, extra_words=metaworld_words())
    os.replace(tmp, final)
    return final


def train_prior(kind: str, dataset_root: Path, repo_id: str, out_dir: Path, *, steps: int, batch_size: int,
                chunk_size: int = 8, size: str = "cpu", seed: int = 0, lr: float | None = None,
                save_freq: int | None = None, progress: bool = True) -> Path:
    """Train (or resume, or reuse) a ``kind`` prior with ``lerobot-train`` on the local LeRobotDataset at
    ``dataset_root``; returns the checkpoint folder (``…/checkpoints/last/pretrained_model``) that
    ``trqam_sdk.adapters.lerobot.from_pretrained`` loads (pi0 / pi0.5 inside ``tiny_pi_architecture``).

    ``size`` is the SmolVLM backbone (``tiny`` for tests, ``cpu`` for 2-core experiments); pi0 / pi0.5 are
    always the tiny test architecture. ``lr`` None keeps the policy's preset (SmolVLA 1e-4, pi0 2.5e-5, cosine
    schedule with warm-up scaled to ``steps``). ``save_freq`` None saves every ``max(steps // 4, 1)`` steps.
    """
    if kind not in PRIOR_KINDS:
        raise ValueError(f"unknown prior kind {kind!r}; choose one of {PRIOR_KINDS}")
    if size not in SIZES:
        raise ValueError(f"unknown prior size {size!r}; choose one of {SIZES}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    dataset_root, out_dir = Path(dataset_root).resolve(), Path(out_dir).resolve()
    image_size = dataset_image_size(dataset_root)
    spec = prior_spec(kind, dataset_root, repo_id, steps=steps, batch_size=batch_size, chunk_size=chunk_size,
                      size=size, seed=seed, lr=lr, save_freq=save_freq)
    run_dir, spec_path = out_dir / RUN_DIR, out_dir / SPEC_FILE
    if spec_path.is_file():
        old = json.loads(spec_path.read_text())
        if old != spec:
            diff = {k: (old.get(k), spec.get(k)) for k in sorted(set(old) | set(spec)) if old.get(k) != spec.get(k)}
            raise ValueError(f"{out_dir} holds a prior with a different spec ({spec_path}); differences "
                             f"(stored, asked): {diff}. Use another out_dir or delete this one.")
    elif run_dir.exists():
        raise FileExistsError(f"{run_dir} exists but {spec_path} does not: not a run of train_prior; "
                              "refusing to touch it")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec_path, json.dumps(spec, indent=2) + "\n")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and checkpoint_step(ckpt) >= steps:
        return ckpt / "pretrained_model"
    model_dir = _build_model_dir(kind, out_dir, size, image_size)
    if ckpt is not None:
        # --output_dir overrides the stored one, so a moved / copied out_dir resumes in place
        args = ["--resume=true", f"--config_path={ckpt / 'pretrained_model' / 'train_config.json'}",
                f"--output_dir={run_dir}"]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # died before its first checkpoint: nothing to resume
        args = lerobot_train_args(kind, dataset_root, repo_id, run_dir, model_dir, steps=steps,
                                  batch_size=batch_size, chunk_size=chunk_size, size=size, image_size=image_size,
                                  seed=seed, lr=lr, save_freq=save_freq or max(steps // 4, 1),
                                  log_freq=max(1, min(100, steps // 10)))
    cmd = lerobot_command("train", args, tokenizer=model_dir if kind != "smolvla" else None,
                          tiny_pi=kind != "smolvla")
    run_logged(cmd, out_dir / LOG_FILE, progress, what="lerobot-train")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or checkpoint_step(ckpt) < steps:
        raise RuntimeError(f"lerobot-train exited cleanly but {run_dir}/checkpoints has no complete checkpoint "
                           f"at step {steps} (see {out_dir / LOG_FILE})")
    prune_checkpoints(run_dir, keep=ckpt)
    return ckpt / "pretrained_model"


def prune_checkpoints(run_dir: Path, keep: Path) -> list[Path]:
    """Delete a finished run's intermediate checkpoints (they exist only for resuming; a tiny pi0 one is
    ~280 MB with its optimizer state); ``keep`` (and the ``last`` link to it) stays. Returns what was removed."""
    keep_real = keep.resolve()
    gone = [d for d in (Path(run_dir) / "checkpoints").iterdir()
            if d.is_dir() and not d.is_symlink() and d.resolve() != keep_real]
    for d in gone:
        shutil.rmtree(d)
    return gone


@contextlib.contextmanager
def local_pi_tokenizer(folder: Path) -> Iterator[None]:
    """pi0 / pi0.5 processor factories hard-code the PaliGemma tokenizer: build theirs from ``folder`` instead,
    so the saved ``policy_preprocessor.json`` names the local tokenizer (loads later without this patch)."""
    from lerobot.policies.pi0 import processor_pi0
    from lerobot.policies.pi05 import processor_pi05

    saved = {m: m.TokenizerProcessorStep for m in (processor_pi0, processor_pi05)}

    def patched(real: Any) -> Any:
        def make(*args: Any, tokenizer_name: str | None = None, **kwargs: Any) -> Any:
            name = str(folder) if tokenizer_name == PALIGEMMA_TOKENIZER else tokenizer_name
            return real(*args, tokenizer_name=name, **kwargs)
        return make

    for mod, real in saved.items():
        mod.TokenizerProcessorStep = patched(real)
    try:
        yield
    finally:
        for mod, real in saved.items():
            mod.TokenizerProcessorStep = real


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m trqam_sdk.integrations.lerobot.prior --tiny-pi [--tokenizer DIR] {train,eval} -- ARGS``:
    LeRobot's own train / eval entry point, run inside ``tiny_pi_architecture`` (and the local tokenizer)."""
    parser = argparse.ArgumentParser(prog="python -m trqam_sdk.integrations.lerobot.prior")
    parser.add_argument("--tiny-pi", action="store_true", required=True,
                        help="build pi0 / pi0.5 at the tiny test sizes (trqam_sdk.testing.tiny_lerobot)")
    parser.add_argument("--tokenizer", type=Path, help="local tokenizer folder replacing PaliGemma's")
    parser.add_argument("script", choices=("train", "eval"))
    parser.add_argument("lerobot_args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    rest = ns.lerobot_args[1:] if ns.lerobot_args[:1] == ["--"] else ns.lerobot_args
    from trqam_sdk.testing.tiny_lerobot import tiny_pi_architecture

    if ns.script == "train":
        from lerobot.scripts.lerobot_train import main as entry
    else:
        from lerobot.scripts.lerobot_eval import main as entry
    sys.argv = [f"lerobot-{ns.script}", *rest]  # LeRobot's draccus parser reads sys.argv
    with tiny_pi_architecture(), (local_pi_tokenizer(ns.tokenizer) if ns.tokenizer else contextlib.nullcontext()):
        entry()


if __name__ == "__main__":
    main()
