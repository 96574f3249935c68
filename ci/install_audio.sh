#!/usr/bin/env bash
# Install what the speech tests need, if missing: Debian's espeak-ng (real speech) and sox (rates,
# channels), and the `speech` extra's Python packages in the given interpreter, SpeechTokenizer
# without its dependencies: its metadata requires torchaudio, which would replace the pinned torch,
# and megatron_mio.codec loads its model without the trainer that needs torchaudio.
# Idempotent and quiet when everything is there.  Usage: bash ci/install_audio.sh PYTHON
set -euo pipefail
PY=${1:?usage: ci/install_audio.sh PYTHON}

missing=()
for prog in espeak-ng sox; do command -v "$prog" >/dev/null 2>&1 || missing+=("$prog"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: installing ${missing[*]} needs root (apt-get); run ci/install_audio.sh as root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends espeak-ng sox >/dev/null
    echo "installed ${missing[*]}"
fi

if ! "$PY" -c "import soundfile, soxr, einops, importlib.util as u; assert u.find_spec('speechtokenizer')" 2>/dev/null; then
    quiet=(-q --disable-pip-version-check)
    "$PY" -m pip install "${quiet[@]}" soundfile soxr einops 2>&1 | grep -v "is ignored" || true
    "$PY" -m pip install "${quiet[@]}" --no-deps "speechtokenizer==1.0.1" 2>&1 | grep -v "is ignored" || true
    "$PY" -c "import soundfile, soxr, einops, importlib.util as u; assert u.find_spec('speechtokenizer')" \
        || { echo "error: installing the speech packages failed" >&2; exit 1; }
    echo "installed the speech codec's Python packages"
fi
