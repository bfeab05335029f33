#!/usr/bin/env bash
# Build .venv with CPU torch, the pinned fairseq dependencies, fairseq-fixed and this package.
# Idempotent: a second run checks what is there and returns in seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
FAIRSEQ_SPEC=${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}
STAMP="$VENV/.leebert-setup-done"

fingerprint() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/setup.py" "$0" | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" ]]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

LOG=${SETUP_LOG:-$ROOT/setup.log}
: > "$LOG"
step() {  # one line per step on the terminal; pip's whole output goes to $LOG
  local what=$1; shift
  echo "setup: $what ..."
  if ! "$@" >> "$LOG" 2>&1; then
    echo "setup: failed: $what. The last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}
echo "setup: building $VENV (3 to 8 minutes the first time; log: $LOG)"
[[ -x "$VENV/bin/python" ]] || step "creating the virtual environment" python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

# 1. CPU torch first: fairseq's C extensions compile against the torch that is already there.
"$PY" -c "import torch" 2>/dev/null || step "1/5 installing $TORCH_SPEC" "${PIP[@]}" "$TORCH_SPEC"
# 2. fairseq's runtime and build dependencies, pinned, without torchaudio.
step "2/5 installing the pinned dependencies (requirements.txt)" "${PIP[@]}" -r "$ROOT/requirements.txt"
# 2b. packages whose declared dependencies we do not need (tokenizers: no model-hub client).
step "3/5 installing requirements-nodeps.txt" "${PIP[@]}" --no-deps -r "$ROOT/requirements-nodeps.txt"
# 3. fairseq itself, without build isolation (else pip builds against a fresh CUDA torch)
#    and without dependencies (else it pulls a torchaudio that cannot load on CPU torch).
"$PY" -c "import fairseq" 2>/dev/null || step "4/5 compiling $FAIRSEQ_SPEC" \
  "${PIP[@]}" --no-build-isolation --no-deps "$FAIRSEQ_SPEC"
# 4. this package, editable.
step "5/5 installing leebert-plugin (editable)" "${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"

"$PY" -c "import fairseq, leebert_plugin; print('setup: fairseq', fairseq.__version__, 'OK')"
fingerprint > "$STAMP"
