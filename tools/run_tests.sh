#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole pytest suite.
# Usage: bash tools/run_tests.sh [pytest args...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$(bash "$ROOT/tools/setup_venv.sh" | tail -n1)
# The Slurm launch tests run a real one-node cluster: install Debian's Slurm if it is missing.
bash "$ROOT/ci/slurm/install.sh"
# The speech codec tests speak with espeak-ng through SpeechTokenizer: install what is missing.
bash "$ROOT/ci/install_audio.sh" "$PY"
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec "$PY" -m pytest "$@"
