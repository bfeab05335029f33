#!/usr/bin/env bash
# On a machine with network: download everything but torch that the plugin needs on an offline GPU
# machine (which has its own Python and CUDA torch) into WHEELHOUSE (default: wheelhouse/).
#   bash scripts/gpu_wheelhouse.sh [WHEELHOUSE]        PYTHON=python3.10 bash ... for another Python
# Carry WHEELHOUSE beside the checkout and run scripts/gpu_setup.sh WHEELHOUSE there.
#
# Wheels are per Python version and platform: run this with the GPU machine's Python version
# (PYTHON=...) on the same platform (linux x86_64, say). What is left out of requirements.txt, and
# why (each absent from `import fairseq, fairseq_cli.train, fairseq_cli.validate, leebert_plugin`,
# checked by blocking its import; none is used to train or validate the bundled configs):
#   matplotlib (sweep_thresholds.py's plots only), pytest (tests), tensorboardX (fairseq prints an
#   install hint without it), safetensors (convert_hf_bert.py only), cffi (declared by fairseq, not
#   imported). Kept although large: scikit-learn and scipy (fairseq's audio_classification task
#   imports sklearn when fairseq loads its tasks; the plugin's Spearman meter imports scipy), numpy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/wheelhouse}")
PYTHON=${PYTHON:-python3}
FAIRSEQ_SPEC=${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}
EXCLUDE='^(matplotlib|pytest|tensorboardX|safetensors|cffi)=='

mkdir -p "$OUT"
PIP=("$PYTHON" -m pip download --disable-pip-version-check -q -d "$OUT")
# the install list gpu_setup.sh reads: requirements.txt without the packages above
grep -Ev '^\s*(#|$)' "$ROOT/requirements.txt" | grep -Ev "$EXCLUDE" > "$OUT/requirements.txt"
cp "$ROOT/requirements-nodeps.txt" "$OUT/requirements-nodeps.txt"
echo "$FAIRSEQ_SPEC" > "$OUT/fairseq.txt"
printf "setuptools\nwheel\n" > "$OUT/build-tools.txt"

"${PIP[@]}" -r "$OUT/requirements.txt"                 # with their dependencies (PyYAML, lxml, joblib, ...)
"${PIP[@]}" --no-deps -r "$OUT/requirements-nodeps.txt"  # tokenizers, without the model-hub client
# fairseq-fixed as its source: it compiles C++ extensions against the GPU machine's torch. Reading
# its metadata runs its setup.py, which imports torch: --no-build-isolation uses this Python's torch
# (if it has none, pip would fetch one into a temporary environment: several GB for a CUDA build).
"${PIP[@]}" --no-deps --no-build-isolation --no-binary :all: "$FAIRSEQ_SPEC"
# fairseq's (and this package's) build tools, for a Python whose venv comes without them
"${PIP[@]}" -r "$OUT/build-tools.txt"

echo "wheelhouse: $OUT"
du -h --apparent-size "$OUT"/* | sort -h
echo "total: $(du -sh --apparent-size "$OUT" | cut -f1)"
