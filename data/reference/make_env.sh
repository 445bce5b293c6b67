#!/usr/bin/env bash
# The reference environment: Python 3.10 with obp 0.5.7, spotify-confidence 4.1.0 and
# gbstats 0.8.0 on the versions they declare (numpy 1.23, pandas 1.5), pinned in
# requirements.txt. obp requires Python < 3.11, so this cannot be the project's venv.
# Usage: bash data/reference/make_env.sh [PYTHON3.10]   (about 1 GB: obp pins torch 1.12)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-}"
if [ -z "$PY" ]; then
  for cand in python3.10 "$HOME/.pyenv/versions/3.10.13/bin/python" /root/.pyenv/versions/3.10.13/bin/python; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "no Python 3.10 found: pass its path as the first argument" >&2; exit 1; fi
"$PY" -m venv .venv-reference
.venv-reference/bin/python -m pip install -q -r data/reference/requirements.txt
.venv-reference/bin/python -c "import obp, spotify_confidence, gbstats; print('reference environment ready: obp', obp.__version__)"
