"""`stratus export`: checkpoint -> fp32 -> pruned -> int8 ONNX -> evaluated -> gated artifact.

    # newest verified checkpoint of a run, default compression, staged into runs/mlp-binary/export
    stratus export --run-dir runs/mlp-binary
    # a given tag, stronger pruning, static quantization, then publish into a local repository
    stratus export --run-dir runs/mlp-binary --checkpoint global_step3000 \\
        --structured-fraction 0.75 --sparsity 0.8 --quantization static --publish runs/model-repo

Stages (one progress line each):
  1. verify the checkpoint's manifest (nothing is unpickled before it verifies);
  2. consolidate the ZeRO shards to fp32 with DeepSpeed's zero_to_fp32 and save
     `<run>/consolidated/<tag>.safetensors` (written even if the gate later fails: it is the
     checkpoint in portable form, not the artifact);
  3. prune: structured (whole hidden units), then unstructured magnitude, then fine-tune;
  4. export FP32 ONNX (dynamic batch) and quantize to int8 with ONNX Runtime;
  5. evaluate fp32 (PyTorch) and int8 (ONNX Runtime) on the validation split; measure latency;
  6. gate on the accuracy drop, then stage `model.onnx` + `manifest.json` into the output
     directory (atomically replacing a previous export) and, with `--publish`, publish it.

If the gate fails, the output directory is left as it was and nothing is published.
Exit codes (docs/architecture.md): 0 exported; 1 staging or publishing failed (the staged export
is kept); 2 bad arguments, checkpoint tag, data or output directory; 3 no checkpoint verifies;
4 the gate failed (accuracy dropped more than --tolerance; nothing written or published).
(`python -m runtime export ...` is the same command without the console script.)
"""

from __future__ import annotations

import sys

from runtime.common.log import get_logger
from runtime.common.options import parse_options
from runtime.contract import ExitCode
from runtime.export.config import ExportConfig, ExportError, GateError, NoCheckpointError
from runtime.export.pipeline import run_export
from runtime.repository.artifact import ArtifactError
from runtime.repository.store import PublishError

log = get_logger()


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus export`; returns an `ExitCode` (see the module docstring)."""
    try:
        cfg = parse_options(ExportConfig, argv, prog="stratus export", description=__doc__)
    except ExportError as e:
        log.error("export failed: %s", e)
        return ExitCode.BAD_INPUT
    return export(cfg)


def export(cfg: ExportConfig) -> int:
    """Run the export of `cfg` (from the command line or built in-process, e.g. by node 0's
    `runtime.remote.publish`); returns an `ExitCode` (see the module docstring)."""
    try:
        run_export(cfg)
    except GateError as e:
        log.error("%s", e)
        return ExitCode.GATE_FAILED
    except NoCheckpointError as e:
        log.error("export failed: %s", e)
        return ExitCode.NO_CHECKPOINT
    except ExportError as e:
        log.error("export failed: %s", e)
        return ExitCode.BAD_INPUT
    except (ArtifactError, PublishError) as e:
        log.error("export failed (a staged export is kept): %s", e)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
