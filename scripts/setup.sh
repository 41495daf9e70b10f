#!/usr/bin/env bash
# Create/refresh .venv (Python 3.12) with trqam-sdk and its dev tools. Idempotent and quick when nothing changed.
# One torch only: the pin torch>=2.7,<2.12 in pyproject.toml (lerobot 0.6's range) is the single source of it.
set -euo pipefail
cd "$(dirname "$0")/.."
# Default: everything the test suite exercises (OGBench, plots, TensorBoard, LeRobot VLAs + MetaWorld, robosuite).
# TRQAM_EXTRAS=dev for a lean core install (what `trqam train` and the Python API need), or any subset of the
# extras in pyproject.toml.
EXTRAS="${TRQAM_EXTRAS:-dev,ogbench,tensorboard,plots,lerobot,metaworld,robomimic}"

find_python() {
  for cand in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || { echo "setup: Python 3.12 not found (pyenv install 3.12 or put python3.12 on PATH)" >&2; exit 1; }
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

stamp=".venv/.trqam-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  before=$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
  echo "setup: installing trqam-sdk[$EXTRAS] (torch before: $before)"
  pin=()
  if [ "$before" != none ]; then  # an installed torch is a constraint: pip fails rather than swap it
    echo "torch==${before%%+*}" > .venv/.trqam-torch-constraint.txt  # 2.11.0 matches the installed 2.11.0+cu130
    pin=(-c .venv/.trqam-torch-constraint.txt)
  fi
  .venv/bin/python -m pip install -q "${pin[@]}" -e ".[$EXTRAS]"
  case ",$EXTRAS," in
    *,robomimic,*|*,all,*) .venv/bin/python -m pip install -q --no-deps "robosuite==1.5.2" ;;
  esac
  after=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
  if [ "$before" != none ] && [ "$before" != "$after" ]; then
    echo "setup: torch changed from $before to $after — refusing to continue silently" >&2; exit 1
  fi
  touch "$stamp"
fi
.venv/bin/python -c 'import torch, accelerate; print(f"setup: ok (torch {torch.__version__}, accelerate {accelerate.__version__})")'
case ",$EXTRAS," in
  *,ogbench,*|*,all,*) .venv/bin/python -c 'import ogbench, mujoco' ;;
esac
