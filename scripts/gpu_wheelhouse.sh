#!/usr/bin/env bash
# On a machine with network: download everything but torch that the plugin needs on an offline GPU
# machine (which has its own Python and CUDA torch) into WHEELHOUSE (default: wheelhouse/).
#   bash scripts/gpu_wheelhouse.sh [WHEELHOUSE]        PYTHON=python3.12 bash ... for another Python
#   LEAVE_OUT="numpy scipy scikit-learn ..." bash ...  packages the GPU machine already has, left out
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
# All of it is about 87 MB for CPython 3.11 on linux x86_64 (scipy 34, numpy 17, fairseq's source 11,
# scikit-learn 9); to carry it in 64 MiB, leave out what the GPU machine has: CUDA images usually ship
# the scientific stack (this workplace's GPU image has numpy, scipy, scikit-learn, lxml, joblib,
# threadpoolctl, narwhals, cloudpickle), and gpu_setup.sh keeps a package the machine has.
# TORCH_PYTHON (default PYTHON) reads fairseq-fixed's metadata: its setup.py imports torch.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/wheelhouse}")
PYTHON=${PYTHON:-python3}
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
LEAVE_OUT=${LEAVE_OUT:-}
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
"$TORCH_PYTHON" -m pip download --disable-pip-version-check -q -d "$OUT" \
  --no-deps --no-build-isolation --no-binary :all: "$FAIRSEQ_SPEC"
# fairseq's (and this package's) build tools, for a Python whose venv comes without them
"${PIP[@]}" --no-deps -r "$OUT/build-tools.txt"
for name in $LEAVE_OUT; do  # file names spell a project's name lower-case with underscores
  norm=$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')
  find "$OUT" -maxdepth 1 -type f \( -iname "${norm}-*" -o -iname "${name}-*" \) -print -delete | sed 's/^/left out: /'
done

echo "wheelhouse: $OUT"
du -h --apparent-size "$OUT"/* | sort -h
echo "total: $(du -sh --apparent-size "$OUT" | cut -f1)"
(( $(du -sb "$OUT" | cut -f1) <= 64 * 1024 * 1024 )) || echo "note: over 64 MiB; see LEAVE_OUT above"
