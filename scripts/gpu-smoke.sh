#!/usr/bin/env bash
# GPU smoke test: bf16 + NCCL DeepSpeed ZeRO training on every local GPU, then export of the
# GPU-trained checkpoint. Run on a machine with CUDA (a training node, or any GPU box):
#
#   ./scripts/gpu-smoke.sh                 # sets up .venv from requirements.txt (CUDA torch from PyPI)
#   STRATUS_SYSTEM_PYTHON=1 ./scripts/gpu-smoke.sh   # use the python on PATH as it is (preinstalled torch)
#   OUT=/tmp/smoke ./scripts/gpu-smoke.sh  # where runs and logs go (default runs/gpu-smoke)
#
# Exits non-zero on the first failing check; prints one PASS line per check.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
if [[ "${STRATUS_SYSTEM_PYTHON:-0}" == 1 ]]; then
  export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
else
  source scripts/_venv.sh
fi
export DS_ACCELERATOR=cuda
out="${OUT:-runs/gpu-smoke}"
rm -rf "${out}" && mkdir -p "${out}"
ngpu=$(python -c 'import torch; print(torch.cuda.device_count())')
if [[ "${ngpu}" -lt 1 ]]; then
  echo "gpu-smoke: no CUDA device visible to torch; run this on a GPU host" >&2
  exit 1
fi
python - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}, NCCL {torch.cuda.nccl.version()}")
PY

check() {  # check NAME RUN_NAME ZERO_STAGE OFFLOAD
  local name=$1 run=$2 stage=$3 offload=$4
  python -m runtime train --nproc "${ngpu}" --run-name "${run}" \
    --set output_dir="${out}" --set max_steps=60 --set log_every=20 --set checkpoint_every=30 \
    --set parallel.zero_stage="${stage}" --set parallel.offload="${offload}" 2>&1 | tee "${out}/${run}.log"
  python - "${out}/${run}" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
assert s["device"] == "cuda" and s["precision"] == "bf16" and s["backend"] == "nccl", s
assert s["val_accuracy"] > 0.9, s
print(f"ok: ZeRO-{s['zero_stage']} offload={s['offload']} {s['precision']} {s['backend']} val_accuracy={s['val_accuracy']:.4f}")
PY
  echo "PASS ${name}"
}

check "ZeRO-2 bf16 (NCCL)" z2 2 none
check "ZeRO-3 bf16 (NCCL)" z3 3 none
check "ZeRO-2 bf16 + CPU optimizer offload" z2off 2 optimizer

python -m runtime export --run-dir "${out}/z3" --out "${out}/z3-export" --publish "${out}/model-repo" \
  2>&1 | tee "${out}/export.log"
python - "${out}" <<'PY'
import sys
from pathlib import Path
from runtime.repository.artifact import verify_artifact
repo = Path(sys.argv[1]) / "model-repo" / "mlp-binary"
version = (repo / "LATEST").read_text().strip()
m = verify_artifact(repo / version)
print("ok: published version", version, "metrics", m.get("metrics"))
PY
echo "PASS export of a GPU-trained (bf16, ZeRO-3) checkpoint"
