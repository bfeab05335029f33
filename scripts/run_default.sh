#!/usr/bin/env bash
# Command 1: set up, then the main job: all-MiniLM-L6-v2 (from a PyPI wheel) fine-tuned with LeeBERT on
# rotten-tomatoes snippets, a threshold chosen on dev at 2x, measured on test (table + Pareto plot).
#   bash scripts/run_default.sh [RUN_DIR] [--train-rows N] [--epochs E]     (default RUN_DIR: runs/main)
#   bash scripts/run_default.sh --quick [RUN_DIR]    the one-minute demo: a tiny model from scratch (runs/mr)
# Re-running reuses what is there (the converted model, the data, the checkpoints: fairseq resumes).
# The steps: leebert_plugin/demo.py (python -m leebert_plugin.demo --help).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
export PATH="$ROOT/.venv/bin:$PATH" PYTHONWARNINGS=ignore
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m leebert_plugin.demo "$@"
