# shellcheck shell=bash
# Sourced by scripts/*.sh: creates .venv from requirements.txt when missing or stale, then installs
# this project into it (editable: `stratus` on PATH, `runtime`/`infra` importable from anywhere).
# Idempotent: a stamp with the hash of requirements.txt, requirements/*.txt and pyproject.toml skips
# pip when nothing changed.
# Env: STRATUS_PYTHON (interpreter used to create the venv, default python3).
set -euo pipefail
STRATUS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STRATUS_ROOT}/.venv"
stamp="${VENV}/.requirements.sha256"
want="$(cat "${STRATUS_ROOT}/requirements.txt" "${STRATUS_ROOT}"/requirements/*.txt "${STRATUS_ROOT}/pyproject.toml" \
  | sha256sum | cut -d' ' -f1)"
if [[ ! -x "${VENV}/bin/python" ]]; then
  py="${STRATUS_PYTHON:-python3}"
  if ! "${py}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "[setup] ${py} is missing or older than Python 3.11; install 3.11+ or set STRATUS_PYTHON" >&2
    exit 2
  fi
  echo "[setup] creating ${VENV}" >&2
  "${py}" -m venv "${VENV}"
fi
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
  echo "[setup] installing requirements.txt (requirements/*.txt) into ${VENV} (first run takes a few minutes)" >&2
  "${VENV}/bin/python" -m pip install --quiet --upgrade pip
  "${VENV}/bin/python" -m pip install --quiet -r "${STRATUS_ROOT}/requirements.txt"
  # setuptools prints an informational "Editable installation" banner even under --quiet; keep the
  # output for a failure, where it is the diagnosis, and say nothing when the install works.
  if ! editable_log="$("${VENV}/bin/python" -m pip install --quiet --no-deps --editable "${STRATUS_ROOT}" 2>&1)"; then
    echo "${editable_log}" >&2
    echo "[setup] installing stratus itself into ${VENV} failed (output above)" >&2
    exit 1
  fi
  echo "${want}" > "${stamp}"
fi
export PATH="${VENV}/bin:${PATH}"
# DeepSpeed's CPU ops (Adam, shared-memory all-reduce) are compiled on first use; the build is keyed to
# this venv's paths, so keep it beside the venv (two checkouts on one machine would rebuild each other's).
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${VENV}/torch_extensions}"
# DeepSpeed picks its accelerator from this; CPU unless a CUDA device is visible.
if [[ -z "${DS_ACCELERATOR:-}" ]]; then
  if "${VENV}/bin/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    export DS_ACCELERATOR=cuda
  else
    export DS_ACCELERATOR=cpu
  fi
fi
