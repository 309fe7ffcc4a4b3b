#!/bin/bash
# stratus-prepare.service: fetch the runtime bundle from S3, pick or install Python 3.11, build the
# runtime venv from the bundle's requirements/runtime.txt (offline from the wheelhouse its
# wheels.json names, when present)
# and, on GPU hosts, replace onnxruntime-genai with its CUDA build of the same version and check
# that torch is the CUDA build of the pinned version. On a GPU host whose
# Deep Learning AMI already has that build (its framework Python on 3.11, torch == the pin, CUDA),
# the venv takes torch from there instead of installing it (AMI_PYTHONS, ami_torch_paths).
# The venv is kept between launches, keyed by the hash of the requirements, the wheel file names
# listed in wheels.json and the torch source (venv_key): a relaunch with the same requirements and
# wheelhouse downloads nothing but the bundle and installs nothing. Only to (re)build the venv is
# the wheelhouse tar fetched (s3://<models_bucket>/runtime/wheelhouse/<sha256>.tar), checked
# against the manifest's sha256 (a mismatch fails once, exit 78, naming the object), unpacked
# under /opt/stratus and removed after the install; the install is offline (`pip --no-index`) and
# a wheel missing there fails once (exit 78), naming the package. On training nodes (STRATUS_BUILD_OPS=1) whose requirements pin DeepSpeed,
# its ops are then compiled and imported once (`python -m runtime.remote.ops`, after installing
# the C++ compiler and Python headers it needs) into TORCH_EXTENSIONS_DIR, which the training runs
# use too; on GPU hosts that also checks torch's CUDA against the driver and the toolkit.
# Env (/etc/stratus/stack.env): AWS_REGION, STRATUS_BUNDLE_URI, STRATUS_GPU (1 on GPU hosts),
# STRATUS_BUILD_OPS (1 on training nodes).
# STRATUS_SYSROOT: install under this directory instead of / (tests). Exit 78 (EX_CONFIG): a fault
# that retrying cannot fix (systemd does not restart then); other failures are retried.
set -euo pipefail
R="${STRATUS_SYSROOT:-}"
APP="${R}/opt/stratus"
VENV="${APP}/venv"
EX_CONFIG=78
# DeepSpeed's compiled ops (runtime.contract.HOST_TORCH_EXTENSIONS) and the build env of the runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${APP}/torch-extensions}"
OPS_ENV="${APP}/ops.env"
# The framework interpreter of each Deep Learning AMI family (python_location in the DLAMI release
# notes): /opt/pytorch, a venv, on the PyTorch DLAMIs for Amazon Linux 2023 and Ubuntu 22.04/24.04;
# the conda env /opt/conda/envs/pytorch on the older conda-based ones. Plain AMIs have neither.
AMI_PYTHONS=("${R}/opt/pytorch/bin/python" "${R}/opt/conda/envs/pytorch/bin/python")
AMI_SITE=""
# The bundle's manifest of its wheelhouse (runtime.contract.WHEELS_MANIFEST) and, while the venv is
# built, the directory it is unpacked in (removed on exit, whatever happens).
MANIFEST="${APP}/app/wheels.json"
WHEELS=""
trap '[ -z "${WHEELS}" ] || rm -rf "${WHEELS}" "${WHEELS}.tar"' EXIT

log() { echo "[stratus-prepare] $*" >&2; }
die() {
  log "FATAL: $1"
  exit "${2:-1}"
}

python_is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

find_python() {
  local candidate
  for candidate in ${STRATUS_PYTHON:-} python3.11 python3; do
    if command -v "${candidate}" >/dev/null 2>&1 && python_is_311 "${candidate}"; then
      command -v "${candidate}"
      return 0
    fi
  done
  return 1
}

os_id() {
  # shellcheck source=/dev/null
  [ -r "${R}/etc/os-release" ] && (. "${R}/etc/os-release" && echo "${ID:-unknown}") || echo unknown
}

install_python() {
  # Amazon Linux 2023 (plain and Deep Learning AMI): python3 is 3.9; python3.11 comes from the
  # AL2023 repository, which is served from S3 (reachable through the S3 endpoint, no egress).
  # Ubuntu 22.04 (Deep Learning AMI): python3.11 from universe; needs `egress-enabled: true`.
  local id
  id="$(os_id)"
  log "no Python 3.11 on this ${id} host; installing it"
  case "${id}" in
    amzn) dnf install -y -q python3.11 python3.11-pip || die "dnf could not install python3.11" ;;
    ubuntu)
      apt_install python3.11 python3.11-venv ||
        die "apt-get could not install python3.11 (Ubuntu needs egress-enabled: true, or an AMI with it)"
      ;;
    *) die "no Python 3.11 and no known way to install it on '${id}'; use an Amazon Linux 2023 AMI" "${EX_CONFIG}" ;;
  esac
}

apt_install() {
  # A fresh instance has no package lists: update them once per boot before the first install.
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

install_build_tools() {
  # DeepSpeed compiles its ops with the C++ compiler against the interpreter's headers.
  local include missing=() id
  include="$("${PY}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  [ -f "${include}/Python.h" ] || missing+=(headers)
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=(compiler)
  [ "${#missing[@]}" -eq 0 ] && return 0
  id="$(os_id)"
  log "installing the ${missing[*]} DeepSpeed's ops build with on this ${id} host"
  case "${id}" in
    # AL2023's repository is served from S3: reachable through the S3 endpoint without egress.
    amzn) dnf install -y -q python3.11-devel gcc-c++ || die "dnf could not install python3.11-devel gcc-c++ (Python.h, g++)" ;;
    ubuntu)
      apt_install python3.11-dev g++ ||
        die "apt-get could not install python3.11-dev g++ (Python.h, g++; Ubuntu needs egress-enabled: true, or an AMI with them)"
      ;;
    *) die "no $(printf '%s and ' "${missing[@]}" | sed 's/ and $//') to build DeepSpeed's ops and no known way to install them on '${id}'" "${EX_CONFIG}" ;;
  esac
}

fetch_bundle() {
  aws s3 cp --region "${AWS_REGION}" --only-show-errors "${STRATUS_BUNDLE_URI}" "${APP}/bundle.tar.gz"
  rm -rf "${APP}/app.new" && mkdir -p "${APP}/app.new"
  tar -xzf "${APP}/bundle.tar.gz" -C "${APP}/app.new"
  rm -rf "${APP}/app" && mv "${APP}/app.new" "${APP}/app"
}

manifest() {
  # One field of wheels.json: a list prints one item per line.
  "${PY}" -c 'import json,sys;v=json.load(open(sys.argv[1]))[sys.argv[2]];print("\n".join(v) if type(v) is list else v)' "${MANIFEST}" "$1"
}

fetch_wheelhouse() {
  # Only when the venv is (re)built: the tar wheels.json names, checked against its sha256 before
  # unpacking (content-addressed, so a mismatch is a damaged object that retrying cannot fix).
  local uri sha
  uri="$(manifest uri)"
  sha="$(manifest sha256)"
  WHEELS="$(mktemp -d "${APP}/wheelhouse.XXXXXX")"
  log "fetching the wheelhouse ${uri} ($(manifest size) bytes)"
  aws s3 cp --region "${AWS_REGION}" --only-show-errors "${uri}" "${WHEELS}.tar"
  echo "${sha}  ${WHEELS}.tar" | sha256sum -c --status - ||
    die "${uri} is not the wheelhouse the bundle names (its sha256 is not ${sha}):
  delete it (aws s3 rm ${uri}) and relaunch with --wheels DIR to upload it again" "${EX_CONFIG}"
  tar -xf "${WHEELS}.tar" -C "${WHEELS}"
  rm -f "${WHEELS}.tar"
}

torch_pin() {
  sed -n 's/^torch==\([^ ;#]*\).*/\1/p' "${APP}/app/requirements/runtime.txt"
}

ami_torch_paths() {
  # Print the site-packages of the first AMI framework Python whose torch is the CUDA build of
  # the pin on Python 3.11 (the runtime's ABI); log why each other one is not used.
  local candidate
  for candidate in "${AMI_PYTHONS[@]}"; do
    [ -x "${candidate}" ] || continue
    if "${candidate}" - "$1" <<'PY'; then
import sys
import sysconfig


def skip(reason):
    print(f"[stratus-prepare] not using the AMI's {sys.executable}: {reason}", file=sys.stderr)
    sys.exit(1)


pin = sys.argv[1]
if sys.version_info[:2] != (3, 11):
    skip(f"it is Python {sys.version_info[0]}.{sys.version_info[1]}, the runtime needs 3.11")
try:
    import torch
except ImportError as e:
    skip(f"it has no usable torch ({e})")
if torch.__version__.split("+")[0] != pin:
    skip(f"its torch {torch.__version__} is not the pinned torch=={pin}")
if not torch.version.cuda:
    skip(f"its torch {torch.__version__} is a CPU-only build")
print(f"[stratus-prepare] using the AMI's torch {torch.__version__} (CUDA {torch.version.cuda}) "
      f"from {sys.executable}: no torch download", file=sys.stderr)
paths = sysconfig.get_paths()
print("\n".join(dict.fromkeys((paths["purelib"], paths["platlib"]))))
PY
      return 0
    fi
  done
  return 1
}

install_requirements() {
  local requirements="${APP}/app/requirements/runtime.txt" tag site
  [ -f "${requirements}" ] || die "the bundle has no requirements/runtime.txt; rebuild it with scripts/launch.sh" "${EX_CONFIG}"
  if [ -f "${MANIFEST}" ]; then
    tag="$("${PY}" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
    grep -q -- "-${tag}-" <<<"$(manifest wheels)" || die "the wheelhouse holds no ${tag} wheel: build it for the node's Python with
  stratus wheels --dest DIR (then --wheels DIR)" "${EX_CONFIG}"
    fetch_wheelhouse
  fi
  rm -rf "${VENV}"
  "${PY}" -m venv "${VENV}"
  site="$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [ -n "${AMI_SITE}" ]; then
    # Appended to sys.path after the venv's own site-packages: the venv's pins win, and pip sees
    # torch==pin (and deepspeed's torch) as installed, so it downloads no torch wheel.
    printf '%s\n' "${AMI_SITE}" >"${site}/stratus-ami-torch.pth"
  else
    rm -f "${site}/stratus-ami-torch.pth"
  fi
  if [ -n "${WHEELS}" ]; then
    log "installing ${requirements} offline from the wheelhouse"
    pip_offline -r "${requirements}"
  else
    # PyPI's Linux x86_64 torch wheel is the CUDA build.
    log "installing ${requirements} from the package index"
    "${VENV}/bin/python" -m pip install --quiet -r "${requirements}"
  fi
}

pip_offline() {
  # Offline there is nothing to retry: a wheel missing from the wheelhouse fails once (exit 78), named.
  local out="${APP}/pip-install.log" missing
  if "${VENV}/bin/python" -m pip install --quiet --no-index --find-links "${WHEELS}" "$@" 2>"${out}"; then
    return 0
  fi
  cat "${out}" >&2
  missing="$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "${out}" | head -n 1)"
  [ -n "${missing}" ] || missing="a required package (see pip's output above)"
  rm -rf "${VENV}"
  die "the wheelhouse has no wheel of ${missing} for this host
  (Python 3.11, $(uname -m)); rebuild the wheelhouse with \`stratus wheels --dest DIR\` and relaunch with --wheels DIR" "${EX_CONFIG}"
}

venv_key() {
  # What the venv was built from: the pins, the wheels shipped, where torch comes from, the host kind.
  {
    cat "${APP}/app/requirements/runtime.txt"
    [ -f "${MANIFEST}" ] && manifest wheels
    printf '%s\n' "python=${PY}" "gpu=${STRATUS_GPU:-0}" "ami-torch=${AMI_SITE}"
  } | sha256sum | cut -c1-16
}

build_ops() {
  # DeepSpeed's ops, built once into TORCH_EXTENSIONS_DIR (runtime/remote/ops.py says which).
  local gpu=()
  [ "${STRATUS_BUILD_OPS:-0}" = 1 ] || return 0
  grep -q '^deepspeed==' "${APP}/app/requirements/runtime.txt" || return 0
  install_build_tools
  mkdir -p "${TORCH_EXTENSIONS_DIR}"
  [ "${STRATUS_GPU:-0}" = 1 ] && gpu=(--gpu --cuda-root "${R}/usr/local")
  log "building DeepSpeed's ops into ${TORCH_EXTENSIONS_DIR}"
  # DeepSpeed runs `ninja` from PATH to build and even to load a built op: the venv's (a DeepSpeed
  # dependency), as AL2023 has none in /usr/bin.
  (cd "${APP}/app" && PATH="${VENV}/bin:${PATH}" DS_ACCELERATOR="$([ "${STRATUS_GPU:-0}" = 1 ] && echo cuda || echo cpu)" \
    "${VENV}/bin/python" -m runtime.remote.ops "${gpu[@]}" --env-file "${OPS_ENV}") || {
    local rc=$?
    die "DeepSpeed's ops did not build (above)" "$([ "${rc}" = "${EX_CONFIG}" ] && echo "${EX_CONFIG}" || echo 1)"
  }
}

genai_pin() {
  sed -n 's/^onnxruntime-genai==\([^ ;#]*\).*/\1/p' "${APP}/app/requirements/runtime.txt"
}

install_genai_cuda() {
  # The served language models generate with onnxruntime-genai; on a GPU host its CUDA build of
  # the same version replaces the CPU one (it brings onnxruntime-gpu).
  local pin
  pin="$(genai_pin)"
  [ -n "${pin}" ] || return 0
  log "installing onnxruntime-genai-cuda==${pin} (the CUDA build of the pinned onnxruntime-genai)"
  "${VENV}/bin/python" -m pip uninstall --quiet --yes onnxruntime-genai
  if [ -n "${WHEELS}" ]; then
    pip_offline "onnxruntime-genai-cuda==${pin}"
  else
    "${VENV}/bin/python" -m pip install --quiet "onnxruntime-genai-cuda==${pin}"
  fi
}

check_torch() {
  local pin
  pin="$(torch_pin)"
  # Exit 78 (not retried) for the wrong build; 1 (retried) when no GPU is visible yet.
  "${VENV}/bin/python" - "${pin}" <<'PY' || die "torch on this GPU host is not usable (above)" "$?"
import sys

import torch


def fail(message, code):
    print(message, file=sys.stderr)
    sys.exit(code)


pin = sys.argv[1]
if torch.__version__.split("+")[0] != pin:
    fail(f"torch {torch.__version__} is installed but the bundle pins torch=={pin}", 78)
if not torch.version.cuda:
    fail(f"torch {torch.__version__} is a CPU-only build; GPU hosts need the CUDA build "
         "(PyPI's Linux wheel; for a wheelhouse download it on or for linux x86_64)", 78)
if not torch.cuda.is_available():
    fail(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: NVIDIA driver not loaded or too old", 1)
print(f"[stratus-prepare] torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPUs")
PY
}

mkdir -p "${APP}"
fetch_bundle
PY="$(find_python)" || {
  install_python
  PY="$(find_python)" || die "Python 3.11 is still missing after installing it" "${EX_CONFIG}"
}
log "Python 3.11: ${PY}"
if [ "${STRATUS_GPU:-0}" = 1 ]; then
  [ -n "$(torch_pin)" ] || die "requirements/runtime.txt pins no torch version" "${EX_CONFIG}"
  AMI_SITE="$(ami_torch_paths "$(torch_pin)")" || log "installing the CUDA build of torch==$(torch_pin)"
fi
KEY="$(venv_key)"
if [ -x "${VENV}/bin/python" ] && [ "$(cat "${VENV}/.stratus-key" 2>/dev/null)" = "${KEY}" ]; then
  log "runtime venv up to date (${KEY}): nothing to install"
else
  install_requirements
  [ "${STRATUS_GPU:-0}" = 1 ] && install_genai_cuda
  [ -z "${WHEELS}" ] || rm -rf "${WHEELS}"
  printf '%s\n' "${KEY}" >"${VENV}/.stratus-key"
  log "runtime venv built (${KEY})"
fi
if [ "${STRATUS_GPU:-0}" = 1 ]; then
  check_torch
fi
build_ops
touch "${APP}/.ready"
log "runtime ready in ${VENV}"
