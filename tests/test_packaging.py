"""Packaging: the wheel holds every package and recipe, runs a recipe from outside the repo, and the core is lean.

The wheel is built from a copy of the source (the working tree gets no build/ or egg-info), installed with
``--no-deps`` into a fresh venv in a temporary folder, and run from there. The project's dependencies are made
visible through one ``.pth`` line naming the dev venv's site-packages: ``.pth`` files *inside* a folder added that
way are not executed, so the dev venv's editable finder stays inactive and ``trqam_sdk`` can only come from the
wheel — which the test checks before anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
CORE_DEPS = {"torch", "numpy", "huggingface-hub", "accelerate", "safetensors", "tqdm", "pyyaml"}
"""what fine-tuning needs; every benchmark and integration is an extra"""
HEAVY = ["ogbench", "mujoco", "gymnasium", "lerobot", "transformers", "peft", "robosuite", "h5py", "matplotlib",
         "tensorboard"]
"""never imported by the core (the optional extras and what they pull in)"""


def source_packages() -> dict[str, Path]:
    """Import name → folder of every folder with an ``__init__.py`` under trqam_sdk/ and the package-dir roots."""
    roots = {"trqam_sdk": ROOT / "trqam_sdk", **{name: ROOT / d for name, d in SETUPTOOLS["package-dir"].items()}}
    out = {}
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" not in rel.parts:
                out[".".join([name, *rel.parts])] = init.parent
    return out


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRQAM_", "VIRTUAL_ENV"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built without network or build isolation from a copy of the package sources."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in {"trqam_sdk", *SETUPTOOLS["package-dir"].values()}:
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=120, cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("trqam_sdk-*.whl")
    return whl


def test_package_list_matches_the_source_tree() -> None:
    """pyproject's explicit list names every folder with an __init__.py, and nothing else (a forgotten
    subpackage would be missing from the wheel while the editable install hides it)."""
    listed, found = set(SETUPTOOLS["packages"]), set(source_packages())
    assert not found - listed, f"packages missing from pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
    assert not listed - found, f"listed packages without an __init__.py: {sorted(listed - found)}"


def test_wheel_holds_every_module_and_recipe(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    want = set()
    for pkg, folder in source_packages().items():
        prefix = pkg.replace(".", "/")
        want |= {f"{prefix}/{f.name}" for f in folder.glob("*.py")}
    want |= {f"trqam_sdk/recipes/{p.relative_to(ROOT / 'recipes').as_posix()}" for p in
             (ROOT / "recipes").rglob("*.yaml")}
    assert any(n.startswith("trqam_sdk/recipes/ogbench/") and n.endswith(".yaml") for n in want)
    assert not want - names, f"missing from the wheel: {sorted(want - names)[:20]}"
    assert not any(n.startswith(("adapters/", "recipes/", "tests/")) for n in names), "top-level folders leaked"


def test_wheel_metadata_has_a_lean_core(wheel: Path) -> None:
    """Unconditional requirements are the core; ogbench, lerobot, robomimic, plots, tensorboard are extras."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs if "extra ==" not in r}
    assert core == CORE_DEPS
    extras = {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")}
    assert {"dev", "ogbench", "lerobot", "robomimic", "plots", "tensorboard", "all"} <= extras
    assert any(r.startswith("ogbench") and 'extra == "ogbench"' in r for r in reqs)


def test_core_imports_no_benchmark_or_integration() -> None:
    """Importing the core, the built-in methods, the finetuner and the CLI pulls in none of the extras."""
    code = ("import json, sys\n"
            "import trqam_sdk.core, trqam_sdk.methods, trqam_sdk.training, trqam_sdk.data, trqam_sdk.adapters\n"
            "import trqam_sdk.adapters.base, trqam_sdk.adapters.mlp, trqam_sdk.adapters.lerobot\n"
            "import trqam_sdk.methods.trqam, trqam_sdk.training.finetuner, trqam_sdk.cli, trqam_sdk.cli.train\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [], "the core imported optional dependencies"


def test_wheel_runs_a_recipe_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    """Fresh venv + the wheel (no deps) → `trqam run --recipe cube-single --profile cpu-small`, tiny, from /tmp."""
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "trqam-dev-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # the dev venv's packages
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                           str(wheel)], capture_output=True, text=True, timeout=120, cwd=work, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]

    where = ("import json, sys, trqam_sdk, trqam_sdk.adapters\n"
             "from trqam_sdk.benchmarks.recipes import recipe_dir\n"
             "print(json.dumps({'sdk': trqam_sdk.__file__, 'adapters': trqam_sdk.adapters.__file__,\n"
             "  'recipes': str(recipe_dir('ogbench')), 'editable': any('editable' in m for m in sys.modules)}))")
    seen = json.loads(subprocess.check_output([str(py), "-c", where], text=True, cwd=work, env=clean_env()))
    for key in ("sdk", "adapters", "recipes"):
        assert Path(seen[key]).is_relative_to(site), f"{key} resolved outside the fresh venv: {seen[key]}"
    assert not seen["editable"], "the dev venv's editable finder is active"
    assert (Path(seen["recipes"]) / "cube-single.yaml").is_file()

    sets = ["bc_steps=3", "offline_steps=4", "finetune.batch_size=8", "finetune.log_every=1",
            "finetune.policy.width=16", "finetune.critic.num_critics=2", "finetune.critic.width=16",
            "eval.episodes=1", "eval.max_steps=5", "eval.every=0", f"data.dataset_dir={work / 'data'}",
            "data.episodes=1", "data.episode_length=30", "data.workers=1"]
    cmd = [str(venv / "bin" / "trqam"), "run", "--recipe", "cube-single", "--profile", "cpu-small",
           "--out", str(work / "runs"), "--set", *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"^RESULT .*cube-single", proc.stdout, re.M), proc.stdout[-2000:]
    (result,) = (work / "runs").rglob("result.json")
    assert 0.0 <= json.loads(result.read_text())["success"] <= 1.0
