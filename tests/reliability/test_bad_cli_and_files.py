"""Bad policy folders, bad path strings, bad CLI input: every case is a clear error naming the file, flag or name
(never a bare parser error, a Hub error about repo-id syntax or a traceback), raised before any work starts.

Policies are tiny MLPs saved with ``save_pretrained``; no benchmark data is generated (every CLI case fails on
its name, file or flag before that).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from trqam_sdk.adapters import MLPFlowPolicy, MLPPolicyConfig, ResidualPolicy, load_policy
from trqam_sdk.adapters.lerobot import LEROBOT_ADAPTERS
from trqam_sdk.adapters.lerobot import from_pretrained as lerobot_from_pretrained

from trqam_sdk.benchmarks.results import load_results
from trqam_sdk.cli import main
from trqam_sdk.testing.toy import random_episodes


def tiny_mlp(obs_dim: int = 3) -> MLPFlowPolicy:
    return MLPFlowPolicy(MLPPolicyConfig(obs_dim=obs_dim, horizon=2, action_dim=2, width=8, depth=1))


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return tiny_mlp().save_pretrained(tmp_path_factory.mktemp("saved") / "policy")


def copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "config.json").read_text())
        result = change(meta)
        (folder / "config.json").write_text(json.dumps(meta if result is None else result))
    return apply


def cut_half(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return apply


def drop_tensor(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    del state[sorted(state)[0]]
    save_file(state, str(folder / "model.safetensors"))


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def replace_with_folder(name: str) -> Callable[[Path], None]:
    return lambda folder: ((folder / name).unlink(), (folder / name).mkdir())  # type: ignore[func-returns-value]


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.__setitem__(key, value)


def set_option(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta["config"].__setitem__(key, value)


# (id, how the saved folder is broken, error type, fragments the message must contain ("{f}": the folder))
BROKEN_FOLDERS = [
    ("weights-garbage", write("model.safetensors", b"\xff" * 64), ValueError, ["{f}/model.safetensors", "corrupt"]),
    ("weights-truncated", cut_half("model.safetensors"), ValueError, ["{f}/model.safetensors"]),
    ("weights-empty", write("model.safetensors", b""), ValueError, ["{f}/model.safetensors"]),
    ("weights-pickle", write("model.safetensors", pickle.dumps({"net.w": [1.0]})), ValueError,
     ["{f}/model.safetensors"]),
    ("weights-missing", remove("model.safetensors"), FileNotFoundError, ["{f} has no model.safetensors"]),
    ("weights-a-folder", replace_with_folder("model.safetensors"), FileNotFoundError, ["model.safetensors"]),
    ("weights-lack-a-tensor", drop_tensor, ValueError, ["does not match", "missing ['net."]),
    ("config-missing", remove("config.json"), FileNotFoundError, ["{f} has no config.json"]),
    ("config-not-json", write("config.json", b"{not json"), ValueError, ["{f}/config.json", "not a readable"]),
    ("config-truncated", cut_half("config.json"), ValueError, ["{f}/config.json"]),
    ("config-not-utf8", write("config.json", b"\xff\xfe\x00{"), ValueError, ["{f}/config.json"]),
    ("config-a-list", write("config.json", b"[1, 2]"), ValueError, ["{f}/config.json", "got a list"]),
    ("config-no-adapter", edit_config(lambda m: {"config": m["config"]}), ValueError,
     ["{f}/config.json", "no 'adapter' key"]),
    ("config-unknown-adapter", edit_config(set_key("adapter", "nosuch")), ValueError,
     ["{f}/config.json", "'nosuch'", "known"]),
    ("config-adapter-not-a-name", edit_config(set_key("adapter", 3)), ValueError, ["{f}/config.json", "3"]),
    ("config-options-missing", edit_config(lambda m: {"adapter": "mlp"}), ValueError,
     ["{f}/config.json", "'config'"]),
    ("config-options-a-list", edit_config(set_key("config", [1])), ValueError, ["{f}/config.json", "list"]),
    ("config-unknown-option", edit_config(set_option("colour", 1)), ValueError, ["{f}/config.json", "colour"]),
    ("config-negative-obs-dim", edit_config(set_option("obs_dim", -1)), ValueError, ["{f}/config.json", "obs_dim"]),
    ("config-text-width", edit_config(set_option("width", "wide")), ValueError, ["{f}/config.json", "width"]),
    ("config-wrong-obs-dim", edit_config(set_option("obs_dim", 4)), ValueError, ["does not match", "shape"]),
    ("config-lerobot-unknown-type", write("config.json", b'{"type": "nosuch"}'), ValueError,
     ["{f}/config.json", "'nosuch'"]),
    ("config-lerobot-type-not-a-name", write("config.json", b'{"type": 5}'), ValueError,
     ["{f}/config.json", "no lerobot 'type'"]),
]


@pytest.mark.parametrize(("breaker", "error", "fragments"), [c[1:] for c in BROKEN_FOLDERS],
                         ids=[c[0] for c in BROKEN_FOLDERS])
def test_a_broken_policy_folder_names_the_file(saved_policy: Path, tmp_path: Path, breaker: Callable[[Path], None],
                                               error: type[Exception], fragments: list[str]) -> None:
    folder = copy_of(saved_policy, tmp_path / "policy")
    breaker(folder)
    with pytest.raises(error) as e:
        load_policy(folder)
    assert type(e.value) is error
    for fragment in fragments:
        assert fragment.format(f=folder) in str(e.value)


# strings that cannot be Hub repo ids: never looked up, always "policy folder not found: <the string>"
NOT_REPO_IDS = ["runs/demo/policy", "./nowhere", "../nowhere", "~/trqam-no-such-folder", "a\\b", "C:policy",
                "name with spaces", "-leading-dash", "<abs>"]


@pytest.mark.parametrize("text", NOT_REPO_IDS)
def test_a_missing_local_path_is_not_a_hub_lookup(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = str(tmp_path / "nowhere") if text == "<abs>" else text
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("looked up the Hub"))
    with pytest.raises(FileNotFoundError) as e:
        load_policy(text)
    assert str(e.value) == f"policy folder not found: {text}"


@pytest.mark.parametrize("repo_id", ["user/no-such-policy", "no-such-policy"])
def test_a_possible_repo_id_says_both_lookups(repo_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 (this machine has no internet): the Hub lookup fails fast, and the error says both."""
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(FileNotFoundError) as e:
        load_policy(repo_id)
    assert str(e.value).startswith(f"no local folder {repo_id}, and the Hub lookup of repo id {repo_id} failed: ")
    assert e.value.__cause__ is not None


def test_a_file_where_the_policy_folder_should_be(saved_policy: Path) -> None:
    with pytest.raises(NotADirectoryError, match=r"model\.safetensors is a file, not a policy folder"):
        load_policy(saved_policy / "model.safetensors")


def test_an_empty_policy_path_is_not_the_current_folder() -> None:
    with pytest.raises(ValueError, match="policy folder: an empty path"):
        load_policy("")


def test_from_pretrained_refuses_another_adapter(tmp_path: Path) -> None:
    folder = ResidualPolicy(tiny_mlp(), tiny_mlp()).save_pretrained(tmp_path / "residual")
    assert type(MLPFlowPolicy.from_pretrained(tiny_mlp().save_pretrained(tmp_path / "mlp"))) is MLPFlowPolicy
    with pytest.raises(ValueError, match=r"residual holds a ResidualPolicy .* not a MLPFlowPolicy"):
        MLPFlowPolicy.from_pretrained(folder)


# -- LeRobot checkpoint folders: the SDK's own checks, before lerobot builds a model ---------------------------------
def lerobot_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "vla"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def empty_safetensors(path: Path) -> bytes:
    save_file({}, str(path))
    return path.read_bytes()


LEROBOT_CASES = [
    ("a-file", None, NotADirectoryError, ["is a file, not a LeRobot checkpoint folder"]),
    ("config-not-json", {"config.json": b"{", "model.safetensors": b""}, ValueError, ["{f}/config.json"]),
    ("weights-garbage", {"config.json": b'{"type": "smolvla"}', "model.safetensors": b"\x00" * 16}, ValueError,
     ["{f}/model.safetensors"]),
    ("one-processor", {"config.json": b'{"type": "smolvla"}', "model.safetensors": b"",
                       "policy_preprocessor.json": b"{}"}, FileNotFoundError, ["no policy_postprocessor.json"]),
    ("processor-not-json", {"config.json": b'{"type": "smolvla"}', "model.safetensors": "<empty>",
                            "policy_preprocessor.json": b"{", "policy_postprocessor.json": b"{}"}, ValueError,
     ["{f}/policy_preprocessor.json: not a readable LeRobot processor config"]),
    ("config-bad-field", {"config.json": b'{"type": "smolvla", "no_such_field": 1}', "model.safetensors": "<empty>"},
     ValueError, ["{f}/config.json", "lerobot cannot read it as a smolvla config"]),
]


@pytest.mark.parametrize(("files", "error", "fragments"), [c[1:] for c in LEROBOT_CASES],
                         ids=[c[0] for c in LEROBOT_CASES])
def test_a_broken_lerobot_checkpoint_names_the_file(tmp_path: Path, files: dict[str, Any] | None,
                                                    error: type[Exception], fragments: list[str]) -> None:
    if files is None:
        folder = tmp_path / "file"
        folder.write_text("x")
    else:
        files = {k: empty_safetensors(tmp_path / "e.safetensors") if v == "<empty>" else v for k, v in files.items()}
        folder = lerobot_folder(tmp_path, files)
    with pytest.raises(error) as e:
        if files is None:
            lerobot_from_pretrained(folder)
        else:
            LEROBOT_ADAPTERS["smolvla"].from_pretrained(folder)
    assert type(e.value) is error
    for fragment in fragments:
        assert fragment.format(f=folder) in str(e.value)


def test_restoring_saved_vla_weights_names_a_corrupt_file(tmp_path: Path) -> None:
    """``load_saved_weights`` (resume of a VLA run) reads the file itself before touching the model."""
    from types import SimpleNamespace

    from trqam_sdk.adapters.lerobot import LeRobotFlowPolicy

    (tmp_path / "model.safetensors").write_bytes(b"\x07" * 40)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable pi0 weights file"):
        LeRobotFlowPolicy.load_saved_weights(SimpleNamespace(lerobot_type="pi0"), tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad id", "../up"])
def test_push_to_hub_checks_the_repo_id_before_saving(repo_id: str) -> None:
    from trqam_sdk.integrations.lerobot.hub import push_to_hub

    with pytest.raises(ValueError, match=f"push_to_hub: '{re.escape(repo_id)}' is not a Hub repo id"):
        push_to_hub(None, repo_id)  # type: ignore[arg-type]  (never reached: the id is checked first)


@pytest.mark.parametrize(("text", "error"), [("{", "not a readable run result"), ("[]", "got a list")])
def test_a_broken_result_file_names_it(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text(text)
    with pytest.raises(ValueError, match=error) as e:
        load_results(tmp_path)
    assert str(tmp_path / "a" / "result.json") in str(e.value)


# -- the CLI: one line, exit 2, the thing named, nothing created -----------------------------------------------------
@pytest.fixture
def files(tmp_path: Path, saved_policy: Path) -> dict[str, Path]:
    """A plain file, an empty folder, a broken policy folder, a tiny transitions npz and a corrupt result."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    broken = copy_of(saved_policy, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\xff" * 32)
    np.savez(tmp_path / "toy.npz", **random_episodes(num_episodes=2, length=6, obs_dim=3))
    (tmp_path / "results" / "r").mkdir(parents=True)
    (tmp_path / "results" / "r" / "result.json").write_text("{")
    return {"afile": tmp_path / "afile", "empty": tmp_path / "empty", "broken": broken,
            "npz": tmp_path / "toy.npz", "results": tmp_path / "results"}


# (id, argv ({name}: a path of the fixture, {out}: the output folder, which must not be created), fragments)
CLI_CASES = [
    ("run-unknown-recipe", ["run", "--recipe", "nosuch", "--out", "{out}"], ["'nosuch'", "known"]),
    ("run-unknown-method", ["run", "--recipe", "cube-single", "--method", "nosuch", "--out", "{out}"],
     ["method 'nosuch'"]),
    ("run-unknown-benchmark", ["run", "--benchmark", "nosuch", "--recipe", "x", "--out", "{out}"],
     ["unknown benchmark 'nosuch'"]),
    ("run-unknown-profile", ["run", "--recipe", "cube-single", "--profile", "nosuch", "--out", "{out}"],
     ["no profile 'nosuch'"]),
    ("run-unknown-task", ["run", "--recipe", "cube-single", "--task", "9", "--out", "{out}"], ["no task '9'"]),
    ("run-out-is-a-file", ["run", "--recipe", "cube-single", "--out", "{afile}/sub"], ["--out", "is a file"]),
    ("run-missing-config", ["run", "--recipe", "cube-single", "--config", "{empty}/no.yaml", "--out", "{out}"],
     ["config file not found", "no.yaml"]),
    ("run-config-is-a-folder", ["run", "--recipe", "cube-single", "--config", "{empty}", "--out", "{out}"],
     ["config file not found", "empty"]),
    ("run-recipe-file-missing", ["run", "--recipe", "{empty}/r.yaml", "--out", "{out}"], ["r.yaml"]),
    ("sweep-shard-no-slash", ["sweep", "--recipes", "cube-single", "--shard", "2", "--out", "{out}"],
     ["shard '2'", "i/n"]),
    ("sweep-shard-out-of-range", ["sweep", "--recipes", "cube-single", "--shard", "3/2", "--out", "{out}"],
     ["shard 3/2"]),
    ("sweep-unknown-recipe", ["sweep", "--recipes", "nosuch", "--out", "{out}"], ["'nosuch'"]),
    ("sweep-unknown-method", ["sweep", "--recipes", "cube-single", "--methods", "nosuch", "--out", "{out}"],
     ["['nosuch']"]),
    ("sweep-out-is-a-file", ["sweep", "--recipes", "cube-single", "--out", "{afile}"], ["--out", "is a file"]),
    ("aggregate-no-results", ["aggregate", "--runs", "{empty}", "--no-plots"], ["no result.json under", "empty"]),
    ("aggregate-runs-is-a-file", ["aggregate", "--runs", "{afile}"], ["--runs", "afile", "is a file"]),
    ("aggregate-corrupt-result", ["aggregate", "--runs", "{results}", "--no-plots"], ["r/result.json"]),
    ("aggregate-unknown-benchmark", ["aggregate", "--benchmark", "nosuch", "--runs", "{empty}"],
     ["unknown benchmark 'nosuch'"]),
    ("aggregate-plots-is-a-file", ["aggregate", "--runs", "{results}", "--plots", "{afile}"],
     ["--plots", "is a file"]),
    ("data-out-is-a-file", ["data", "--domain", "cube-single", "--out", "{afile}"], ["--out", "is a file"]),
    ("demo-output-is-a-file", ["demo", "--output-dir", "{afile}"], ["output_dir", "is a file"]),
    ("bench-unknown-config", ["bench", "--configs", "nosuch"], ["unknown config 'nosuch'"]),
    ("bench-unknown-method", ["bench", "--methods", "nosuch"], ["['nosuch']"]),
    ("train-broken-policy", ["train", "--data", "{npz}", "--policy", "{broken}", "--output-dir", "{out}"],
     ["broken/model.safetensors"]),
    ("train-missing-policy", ["train", "--data", "{npz}", "--policy", "runs/demo/nosuch", "--output-dir", "{out}"],
     ["policy folder not found: runs/demo/nosuch"]),
    ("robomimic-missing-data", ["robomimic", "run", "lift", "--data", "{empty}/x.hdf5", "--output-dir", "{out}"],
     ["--data", "x.hdf5", "not found"]),
    ("robomimic-output-is-a-folder", ["robomimic", "generate", "--output", "{empty}"], ["--output", "is a folder"]),
    ("robomimic-no-demos", ["robomimic", "generate", "--output", "{out}/x.hdf5", "--demos", "0", "0", "0"],
     ["--demos"]),
    ("plugin-not-importable", ["--plugin", "trqam_no_such_plugin", "aggregate"], ["trqam_no_such_plugin"]),
]


def fill(argv: list[str], files: dict[str, Path], out: Path) -> list[str]:
    return [a.format(out=out, **files) for a in argv]


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_is_one_line_before_any_work(argv: list[str], fragments: list[str], files: dict[str, Path],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRQAM_DEBUG", raising=False)
    out = tmp_path / "out"
    assert main(fill(argv, files, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("trqam: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.format(**files) in err, err
    assert not out.exists(), "a bad input created the output folder"


ARGPARSE_CASES = [
    ("run-negative-seed", ["run", "--recipe", "cube-single", "--seed", "-1"], "argument --seed: must be >= 0"),
    ("sweep-negative-seed", ["sweep", "--recipes", "cube-single", "--seeds", "0", "-2"], "argument --seeds"),
    ("data-zero-episodes", ["data", "--domain", "cube-single", "--episodes", "0"], "argument --episodes"),
    ("data-zero-workers", ["data", "--domain", "cube-single", "--workers", "0"], "argument --workers"),
    ("bench-zero-steps", ["bench", "--steps", "0"], "argument --steps: must be >= 1"),
    ("bench-negative-threads", ["bench", "--threads", "-1"], "argument --threads"),
    ("lerobot-bench-zero-repeats", ["lerobot-bench", "--repeats", "0"], "argument --repeats"),
    ("robomimic-negative-demos", ["robomimic", "generate", "--output", "x.hdf5", "--demos", "-1", "0", "0"],
     "argument --demos"),
    ("robomimic-zero-max-steps", ["robomimic", "generate", "--output", "x.hdf5", "--max-steps", "0"],
     "argument --max-steps"),
    ("aggregate-unknown-phase", ["aggregate", "--phase", "nosuch"], "argument --phase"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in ARGPARSE_CASES], ids=[c[0] for c in ARGPARSE_CASES])
def test_bad_flag_values_are_argparse_errors(argv: list[str], fragment: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [], "a bad flag created files"


# -- --debug, internal errors, user_error classes, Ctrl-C ------------------------------------------------------------
class TrainingBlewUp(RuntimeError):
    """Stands for the lead's NonFiniteTrainingError: any class with ``user_error = True`` is the user's input."""

    user_error = True


@pytest.mark.parametrize(("raised", "code", "expected"), [
    (RuntimeError("boom\n  second line"), 1,
     "trqam: internal error: RuntimeError: boom second line (run again with --debug for the traceback)\n"),
    (TrainingBlewUp("every update was non-finite"), 2, "trqam: error: every update was non-finite\n"),
    (KeyboardInterrupt(), 130, "trqam: interrupted\n"),
    (PermissionError(13, "Permission denied", "/ro/out"), 2, "trqam: error: [Errno 13] Permission denied: '/ro/out'\n"),
], ids=["internal", "user-error-attribute", "interrupt", "permission"])
def test_failures_are_one_line_with_the_right_code(raised: BaseException, code: int, expected: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import trqam_sdk.cli.aggregate as aggregate

    def fail(args: Any) -> int:
        raise raised

    monkeypatch.delenv("TRQAM_DEBUG", raising=False)
    monkeypatch.setattr(aggregate, "run", fail)
    assert main(["aggregate"]) == code
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("how", ["flag-first", "flag-after-command", "env"])
def test_debug_raises_with_the_traceback(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trqam_sdk.cli.aggregate as aggregate

    def fail(args: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(aggregate, "run", fail)
    monkeypatch.delenv("TRQAM_DEBUG", raising=False)
    argv = {"flag-first": ["--debug", "aggregate"], "flag-after-command": ["aggregate", "--debug"],
            "env": ["aggregate"]}[how]
    if how == "env":
        monkeypatch.setenv("TRQAM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)
    monkeypatch.setattr(aggregate, "run", lambda args: 0)
    assert main(argv) == 0  # --debug changes nothing for a run that works


def test_debug_raises_a_user_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRQAM_DEBUG", raising=False)
    with pytest.raises(FileNotFoundError, match="no result.json under"):
        main(["--debug", "aggregate", "--runs", str(tmp_path), "--no-plots"])


@pytest.mark.parametrize("argv", [[], ["run"], ["sweep"], ["aggregate"], ["data"], ["demo"], ["bench"],
                                  ["lerobot-bench"], ["metaworld"], ["robomimic"]], ids=lambda a: a[0] if a else "top")
def test_help_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every help page renders (a bare '%' in a help string once broke `trqam --help`)."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: trqam")
