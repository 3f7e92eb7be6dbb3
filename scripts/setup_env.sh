# Sourced by scripts/study.sh, .ci/run and by hand (`source scripts/setup_env.sh`): create .venv
# (Python 3.11+), install uv into it with pip, then requirements.txt's exact pins and the desupcon
# package (editable) with uv, printing each step, uv's progress, the time it took and .venv's size.
# Skips the install when requirements.txt, pyproject.toml and the torch choice are unchanged since
# the last successful one. Leaves the calling shell's options (set -e, ...) as they were and puts
# .venv/bin first on its PATH. Works from any folder: .venv is the repository's.
#   PYTHON=python3.12     the interpreter that creates .venv (default: python3)
#   DESUPCON_TORCH=cpu    torch and torchvision (same pinned versions) from the CPU-only index
#                         https://download.pytorch.org/whl/cpu instead of PyPI's CUDA build;
#                         also exported to later uv commands of the shell as UV_TORCH_BACKEND=cpu
(
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  uv_version=0.13.9
  python="${PYTHON:-python3}"
  torch="${DESUPCON_TORCH:-pypi}"
  case "$torch" in
    pypi) backend=() ;;
    cpu) backend=(--torch-backend cpu) ;;
    *) echo "setup: DESUPCON_TORCH=$torch is not a choice: set it to cpu (CPU-only torch wheels) or leave it unset (PyPI's)" >&2
       exit 2 ;;
  esac
  if ! command -v "$python" >/dev/null; then
    echo "setup: $python not found: install Python 3.11+ or point PYTHON at one (e.g. PYTHON=python3.12)" >&2
    exit 2
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: desupcon needs Python 3.11+, $python is $("$python" --version 2>&1): point PYTHON at a newer one (e.g. PYTHON=python3.12)" >&2
    exit 2
  fi
  stamp=.venv/.desupcon-installed
  want="$( (cat requirements.txt pyproject.toml; echo "uv $uv_version") | sha256sum | cut -c1-16) torch=$torch"
  had="$(cat "$stamp" 2>/dev/null || true)"
  if [ "$had" = "$want" ]; then
    echo "setup: .venv is up to date with requirements.txt and pyproject.toml (torch from $torch); nothing to install"
    exit 0
  fi
  if [ -n "$had" ] && [ "${had##* torch=}" != "$had" ] && [ "${had##* torch=}" != "$torch" ]; then
    echo "setup: .venv holds torch from ${had##* torch=}, not $torch (DESUPCON_TORCH); remove it (rm -rf .venv) and run this again to switch" >&2
    exit 2
  fi
  start=$(date +%s)
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$python" --version) ($(command -v "$python"))"
    "$python" -m venv .venv
  fi
  echo "setup [1/3]: uv $uv_version into .venv (pip, one wheel)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$uv_version"
  echo "setup [2/3]: requirements.txt's pins with uv, torch from $torch (the first time on a machine: about 3 GB" \
       "to download, 6 GB installed with PyPI's CUDA torch; uv's cache, $(.venv/bin/uv cache dir), makes the next ones quick)"
  # --compile-bytecode, as pip does: without it every process compiles torch's sources again wherever
  # Python may not write __pycache__ (PYTHONDONTWRITEBYTECODE, a read-only .venv): 7 s instead of 3 s to import it
  .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode "${backend[@]}" -r requirements.txt
  echo "setup [3/3]: desupcon itself, editable (the package in $PWD)"
  .venv/bin/uv pip install --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
  echo "setup: indexing the command line's runs and keys (desupcon/core/cli_index.py), so a typo is answered at once"
  .venv/bin/python -c "import desupcon.__main__ as cli; cli.command_index()"
  echo "setup: .venv ready in $(( $(date +%s) - start )) s, $(du -sh .venv | cut -f1) on disk ($PWD/.venv)"
)
desupcon_setup_status=$?
if [ "$desupcon_setup_status" != 0 ]; then
  unset desupcon_setup_status
  return 1 2>/dev/null || exit 1
fi
unset desupcon_setup_status
if [ "${DESUPCON_TORCH:-}" = cpu ]; then
  export UV_TORCH_BACKEND=cpu
fi
export PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin:$PATH"
