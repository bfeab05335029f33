#!/usr/bin/env bash
# Offline install on a GPU machine that has its own Python with CUDA torch but no network, from a
# wheelhouse made by scripts/gpu_wheelhouse.sh on a networked machine and carried beside the checkout:
#   bash scripts/gpu_setup.sh WHEELHOUSE            then  .venv/bin/python scripts/gpu_check.py
#   PYTHON=/path/to/python VENV=/path/to/venv bash scripts/gpu_setup.sh WHEELHOUSE
# Builds VENV (default .venv beside the checkout) on the machine's Python and lets it see that
# Python's packages (its CUDA torch above all): a .pth file in the venv lists the folders of the machine
# Python's path, which works where that Python is itself a venv (--system-site-packages would show
# only the base interpreter's). VENV=none installs into the machine's Python itself instead.
# What the machine already has is used as it is (its versions win); the rest comes from the
# wheelhouse with `pip install --no-index`; fairseq-fixed is built from its source against the torch
# found, with --no-build-isolation --no-deps (needs a C++ compiler; CUDA_HOME adds its CUDA kernels).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEELHOUSE=$(realpath "${1:?usage: bash scripts/gpu_setup.sh WHEELHOUSE}")
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}
for f in build-tools.txt requirements.txt requirements-nodeps.txt fairseq.txt; do
  [[ -f "$WHEELHOUSE/$f" ]] || { echo "gpu_setup: $WHEELHOUSE/$f is missing: make the wheelhouse with scripts/gpu_wheelhouse.sh" >&2; exit 1; }
done
"$PYTHON" -c "import torch" 2>/dev/null || { echo "gpu_setup: $PYTHON has no torch: install the machine's CUDA torch first" >&2; exit 1; }

if [[ "$VENV" == none ]]; then
  PY=$PYTHON
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # every folder on the machine Python's path but its standard library (folders its own .pth files add too)
    "$PYTHON" -c "import os, sys, sysconfig; std = {sysconfig.get_paths()[k] for k in ('stdlib', 'platstdlib')}
print('\n'.join(p for p in sys.path if p and os.path.isdir(p) and p not in std and not p.endswith('lib-dynload')))" \
      > "$site/machine-site-packages.pth"
  fi
  PY=$VENV/bin/python
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELHOUSE")

missing() {  # the lines of requirement file $1 whose package this Python lacks
  while read -r spec; do
    [[ -z "$spec" || "$spec" == \#* ]] && continue
    "$PY" -m pip show -q "${spec%%[=<>]*}" >/dev/null 2>&1 || echo "$spec"
  done < "$1"
}
mapfile -t needed < <(missing "$WHEELHOUSE/build-tools.txt"; missing "$WHEELHOUSE/requirements.txt")
mapfile -t nodeps < <(missing "$WHEELHOUSE/requirements-nodeps.txt")
echo "gpu_setup: installing ${needed[*]:-nothing} ${nodeps[*]:-}"
[[ ${#needed[@]} -eq 0 ]] || "${PIP[@]}" "${needed[@]}"
[[ ${#nodeps[@]} -eq 0 ]] || "${PIP[@]}" --no-deps "${nodeps[@]}"
"$PY" -c "import fairseq" 2>/dev/null || "${PIP[@]}" --no-build-isolation --no-deps -r "$WHEELHOUSE/fairseq.txt"
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
"$PY" -c "import torch, fairseq, leebert_plugin; print('gpu_setup: fairseq', fairseq.__version__, 'torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
