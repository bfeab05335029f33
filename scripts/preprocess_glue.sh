#!/usr/bin/env bash
# Preprocess one GLUE task for fine-tuning (fairseq's RoBERTa recipe, any bpe):
#   bash scripts/preprocess_glue.sh TASK GLUE_DIR OUT --bpe {gpt2,wordpiece,sentencepiece} [--dict DICT] [bpe files...]
#   wordpiece:     --wordpiece-vocab vocab.txt [--wordpiece-lowercase false]   (--dict: the converter's dict.txt)
#   sentencepiece: --sentencepiece-model spm.model
#   gpt2:          --gpt2-encoder-json encoder.json --gpt2-vocab-bpe vocab.bpe --dict dict.txt
# Options: --workers N, --skip-bad-rows, --overwrite (replace an earlier OUT). Details: python -m leebert_plugin.data.preprocess_glue --help
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec "$PY" -m leebert_plugin.data.preprocess_glue "$@"
