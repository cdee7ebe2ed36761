#!/usr/bin/env bash
# The planner's TRL path on a GPU machine: SFT, then GRPO with colocated vLLM generation.
#
#   bash scripts/gpu_check_trl.sh                      # tiny random Qwen2.5-VL, synthetic data
#   bash scripts/gpu_check_trl.sh --model-dir DIR      # a local Qwen2.5-VL-3B-Instruct
#
# Needs a CUDA GPU, network access to PyPI and about 10 GB of disk for the environment. It
# builds a fresh venv ($VENV, default /tmp/revision-gpu-venv) with torch 2.13.0 (CUDA build from
# PyPI), vllm 0.31.0 and the `rl` extra's pins read from pyproject.toml, and runs the planner
# modules from src/. Not `pip install -e '.[rl]'`: the project's base pins (numpy 2.4.6) and
# vllm 0.31's mistral-common (numpy < 2.4 on Python <= 3.12) do not install together, and the
# check needs none of the base packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/revision-gpu-venv}
PYTHON=${PYTHON:-python3}

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
RL=$("$VENV/bin/python" -c 'import re
block = re.search(r"^rl = \[(.*?)\]", open("pyproject.toml").read(), re.S | re.M).group(1)
print(" ".join(re.findall(r"\"([^\"]+)\"", block)))')
"$VENV/bin/pip" install --quiet --upgrade pip
# shellcheck disable=SC2086  # RL is a list of requirement pins
"$VENV/bin/pip" install --quiet torch==2.13.0 vllm==0.31.0 $RL pillow
installed=$(date +%s)
"$VENV/bin/python" -c 'import torch, vllm, trl, transformers
print("torch", torch.__version__, "vllm", vllm.__version__, "trl", trl.__version__,
      "transformers", transformers.__version__)'

PYTHONPATH=src "$VENV/bin/python" scripts/gpu_check_trl.py "$@"
echo "install $((installed - start)) s, check $(($(date +%s) - installed)) s"
