#!/usr/bin/env bash
# Train (DeepSpeed ZeRO), then export (prune + int8 ONNX + gate) and publish the model.
#
#   ./scripts/launch.sh                         # mlp-binary, 2 local ranks, ZeRO-2 + optimizer offload
#   ./scripts/launch.sh --zero-stage 3 --offload all --run-name z3
#   ./scripts/launch.sh --resume --run-name z3  # continue after a crash or preemption (exit 75)
#   ./scripts/launch.sh --dry-run               # print the DeepSpeed config and command, start nothing
#   ./scripts/launch.sh --preset gpt-small -- --set max_steps=60   # a 32M-parameter GPT on the stdlib corpus
#   ./scripts/launch.sh --preset hf-tiny --model-dir ./my-llama --data chat.jsonl   # your own HF model
#   ./scripts/launch.sh -- --set epochs=2       # anything after -- goes to `stratus train`
#   ./scripts/launch.sh --stack dev             # the same on the stack's training nodes (see --help)
#   stratus wheels --dest wheels/ && ./scripts/launch.sh --stack dev --wheels wheels/   # a stack without egress
#
# Env: STRATUS_PYTHON (python used to create .venv), DS_ACCELERATOR (cpu|cuda; detected),
#      STRATUS_MODEL_REPO (publish target, default <output-dir>/model-repo; s3://bucket/prefix works).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/launch.sh [options] [-- extra `runtime train` arguments]

Sets up .venv from requirements.txt when missing, validates config and data, trains with
DeepSpeed ZeRO data parallelism through DeepSpeed's launcher, then exports and publishes.

options:
  --preset NAME         training preset (default mlp-binary; also mlp-large, and the GPT language
                        models gpt-tiny, gpt-small (CPU) and gpt-350m, gpt-1.3b (GPU nodes))
  --nproc N             local ranks (default 2)
  --zero-stage {0,1,2,3}
                        ZeRO stage (default 2): 1 shards optimizer state, 2 also gradients,
                        3 also parameters (each rank owns a shard, like a parameter server)
  --offload {none,optimizer,all}
                        CPU offload (default optimizer; all = optimizer + parameters, ZeRO-3)
  --data PATH|s3://...  training data (.npz with x,y or .csv with a `label` column; for gpt-*:
                        a directory of text files, .txt, .jsonl with a `text` field, or s3://bucket/prefix/;
                        for hf-*: a .jsonl of {"text": ...} or chat {"messages": [...]} records)
  --model-dir DIR|s3://...
                        your own Hugging Face causal LM (config.json, *.safetensors, tokenizer files)
                        for the hf-* presets (hf-tiny, hf-1b-g5, hf-8b-p5): fine-tuned with ZeRO-3,
                        exported to int4 ONNX with a KV cache; `stratus model push DIR` uploads one
                        for --stack runs
  --run-name NAME       run directory <output-dir>/NAME (default: the preset name)
  --output-dir DIR      parent of run directories (default runs)
  --resume              continue from the newest verified checkpoint of the run
  --no-export           train only; skip export and publish
  --stack NAME          run on the training nodes of Pulumi stack NAME through SSM (no SSH); node 0
                        then exports and publishes to s3://<models_bucket>/models (the serving
                        host picks the new version up)
  --sim-dir DIR         run on the simulated nodes of scripts/sim-stack.sh up DIR (root; no AWS)
  --wheels DIR          with --stack/--sim-dir: upload the wheelhouse DIR once (named by its
                        sha256; the bundle carries its manifest); the nodes fetch it only to
                        rebuild their venv and install from it offline. Build it with
                        `stratus wheels --dest DIR` (add --cpu for CPU-only nodes); required
                        when the stack has no egress
  --dry-run             validate, print the generated DeepSpeed config and the command; run nothing
  -h, --help            this help

exit codes (one table for every command, docs/architecture.md): 0 done; 1 an upload, publish or
node failed; 2 bad config, data or arguments; 3 no usable checkpoint (--resume, export); 4 the
export's accuracy gate failed (nothing was published); 75 preempted (a checkpoint was committed:
rerun with --resume); 130 interrupted (--stack: the nodes keep running).
EOF
}

preset=mlp-binary nproc=2 zero_stage="" offload="" data="" model_dir="" run_name="" output_dir=runs resume=0 export=1 stack=""
dry_run=0 sim_dir="" wheels=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --zero-stage) zero_stage="$2"; shift 2 ;;
    --offload) offload="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --model-dir) model_dir="$2"; shift 2 ;;
    --run-name) run_name="$2"; shift 2 ;;
    --output-dir) output_dir="$2"; shift 2 ;;
    --resume) resume=1; shift ;;
    --no-export) export=0; shift ;;
    --stack) stack="$2"; shift 2 ;;
    --sim-dir) sim_dir="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "launch.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Local paths are taken relative to where launch.sh was started, before it changes directory.
absolute() { if [[ -e "$1" ]]; then realpath "$1"; else printf '%s\n' "$1"; fi; }
[[ -n "${data}" ]] && data="$(absolute "${data}")"
[[ -n "${model_dir}" ]] && model_dir="$(absolute "${model_dir}")"
[[ -n "${wheels}" ]] && wheels="$(absolute "${wheels}")"
if [[ -n "${wheels}" && -z "${stack}${sim_dir}" ]]; then
  echo "launch.sh: --wheels ships wheels to a stack's nodes; add --stack NAME or --sim-dir DIR" >&2
  exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${STRATUS_ROOT}"

train_args=(--preset "${preset}" --nproc "${nproc}" --set "output_dir=${output_dir}")
[[ -n "${zero_stage}" ]] && train_args+=(--set "parallel.zero_stage=${zero_stage}")
[[ -n "${offload}" ]] && train_args+=(--set "parallel.offload=${offload}")
[[ -n "${data}" ]] && train_args+=(--data "${data}")
[[ -n "${model_dir}" ]] && train_args+=(--set "model.model_dir=${model_dir}")
[[ -n "${run_name}" ]] && train_args+=(--run-name "${run_name}")
[[ ${resume} == 1 ]] && train_args+=(--resume)
train_args+=("${extra[@]}")
run_dir="${output_dir}/${run_name:-${preset}}"
repo="${STRATUS_MODEL_REPO:-${output_dir}/model-repo}"

if [[ -n "${stack}" || -n "${sim_dir}" ]]; then
  if [[ -n "${stack}" ]]; then remote_args=(--stack "${stack}"); else remote_args=(--sim-dir "${sim_dir}"); fi
  [[ ${dry_run} == 1 ]] && remote_args+=(--dry-run)
  [[ -n "${wheels}" ]] && remote_args+=(--wheels "${wheels}")
  # node 0 exports from the run's checkpoints in S3 and publishes to the stack's models bucket
  [[ ${export} == 1 ]] && remote_args+=(--export)
  # `stratus remote` (the front door): the runtime's launcher, with the simulator injected for --sim-dir
  exec python -m stratus remote "${remote_args[@]}" -- "${train_args[@]}"
fi

if [[ ${dry_run} == 1 ]]; then
  python -m runtime train "${train_args[@]}" --dry-run
  if [[ ${export} == 1 ]]; then
    echo "then: python -m runtime export --run-dir ${run_dir} --publish ${repo}"
  fi
  exit 0
fi

echo "[launch] training ${preset} on ${nproc} rank(s) (DS_ACCELERATOR=${DS_ACCELERATOR})"
python -m runtime train "${train_args[@]}"

if [[ ${export} == 1 ]]; then
  echo "[launch] exporting ${run_dir} and publishing to ${repo}"
  python -m runtime export --run-dir "${run_dir}" --publish "${repo}"
fi
echo "[launch] done: ${run_dir} (metrics.csv, training.png, summary.json, checkpoints/)"
