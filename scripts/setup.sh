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

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# 1. CPU torch first: fairseq's C extensions compile against the torch that is already there.
"$PY" -c "import torch" 2>/dev/null || "${PIP[@]}" "$TORCH_SPEC"
# 2. fairseq's runtime and build dependencies, pinned, without torchaudio.
"${PIP[@]}" -r "$ROOT/requirements.txt"
# 2b. packages whose declared dependencies we do not need (tokenizers: no model-hub client).
"${PIP[@]}" --no-deps -r "$ROOT/requirements-nodeps.txt"
# 3. fairseq itself, without build isolation (else pip builds against a fresh CUDA torch)
#    and without dependencies (else it pulls a torchaudio that cannot load on CPU torch).
"$PY" -c "import fairseq" 2>/dev/null || "${PIP[@]}" --no-build-isolation --no-deps "$FAIRSEQ_SPEC"
# 4. this package, editable.
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"

"$PY" -c "import fairseq, leebert_plugin; print('setup: fairseq', fairseq.__version__, 'OK')"
fingerprint > "$STAMP"
