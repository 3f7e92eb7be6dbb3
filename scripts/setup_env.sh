# Sourced by scripts/study.sh and .ci/run: create .venv (Python 3.11+) and install the pinned
# requirements and the desupcon package into it. Skips the install when requirements.txt and
# pyproject.toml are unchanged since the last successful one.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "desupcon needs Python 3.11+, found " + sys.version' 
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.desupcon-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
