#!/usr/bin/env bash
# Command 1: set up, then train and validate the tiny exit model on the bundled movie-review data.
#   bash scripts/run_default.sh [RUN_DIR]        (default RUN_DIR: runs/mr)
# Re-running reuses what is there: the preprocessed data, and the checkpoints (fairseq resumes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$(realpath -m "${1:-$ROOT/runs/mr}")
bash "$ROOT/scripts/setup.sh"
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH" PYTHONWARNINGS=ignore

"$PY" -m leebert_plugin.data.sentencepiece_glue "$ROOT/data/mr" "$RUN/data-bin"
echo "training exit_roberta_tiny (log: $RUN/train.log) ..."
(cd "$ROOT" && fairseq-hydra-train --config-dir configs --config-name mr_multi_exit \
    task.data="$RUN/data-bin" checkpoint.save_dir="$RUN/checkpoints") > "$RUN/train.log" 2>&1 \
  || { tail -n 20 "$RUN/train.log"; exit 1; }
for subset in valid test; do
  "$PY" "$ROOT/scripts/validate_thresholds.py" "$RUN/checkpoints/checkpoint_best.pt" "$RUN/data-bin" \
    --policy normalized_entropy --thresholds 0.5 0.8 --subset "$subset"
done
