"""Boot the serving host of a simulated stack with the user data the stack gives a real one.

    python -m sim.serve /tmp/sim [--model-name mlp-binary] [--port 8080] [--grpc-port 8001]

(`scripts/sim-stack.sh serve DIR` runs it.) Uploads the runtime bundle to the simulated models
bucket (as a launch does, SSE-KMS under the stack key), renders
`infra.builders.userdata.serving_user_data` with the simulated stack's outputs, and boots the
serving host with it (`sim.host.boot`): `stratus-serve.service` then runs
`serve.sh`, which asks the host's metadata service for its private address and starts
`python -m runtime serve --repo s3://<models_bucket>/models ...` on it, the token from SSM.
The server answers on `serving_url` of `<dir>/outputs.json` once a version of the model is
published (`scripts/launch.sh --sim-dir DIR` publishes one); its output is in
`<dir>/sim-serving/journal/stratus-serve.service.log`.

Exit status: 0 booted; 1 the user data failed (see `<dir>/sim-serving/cloud-init-output.log`);
2 bad arguments or no simulated stack in DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from infra.builders.userdata import serving_user_data
from runtime.common.s3 import sse_kms_args
from runtime.contract import BUNDLE_KEY, model_name_problem
from runtime.remote.bundle import bundle_entries, write_bundle
from sim import host, stack

ROOT = Path(__file__).resolve().parents[1]


def upload_bundle(sim_dir: Path, outputs: dict) -> None:
    """The runtime bundle at s3://<models_bucket>/runtime/..., as `stratus remote` uploads it."""
    with tempfile.TemporaryDirectory(prefix="stratus-bundle-") as tmp:
        bundle = Path(tmp) / "bundle.tar.gz"
        write_bundle(bundle_entries(ROOT), bundle)
        stack.client(sim_dir, "s3").upload_file(
            str(bundle), outputs["models_bucket"], BUNDLE_KEY, ExtraArgs=sse_kms_args(outputs["kms_key_arn"])
        )


def user_data(outputs: dict, *, model_name: str, port: int, grpc_port: int) -> str:
    """The serving host's user data for the simulated stack's outputs (what `pulumi up` would render)."""
    return serving_user_data(
        region=outputs["region"],
        models_bucket=outputs["models_bucket"],
        model_name=model_name,
        port=port,
        token_parameter=outputs["serving_token_parameter"],
        grpc_port=grpc_port,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", type=Path, help="directory of a simulated stack (scripts/sim-stack.sh up DIR)")
    parser.add_argument("--model-name", default="mlp-binary", help="model to serve (the stack's model-name)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (the stack's serving-port)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port; 0: off (serving-grpc-port)")
    args = parser.parse_args(argv)
    if problem := model_name_problem(args.model_name):
        parser.error(f"--model-name: {problem}")
    outputs_file = args.dir / "outputs.json"
    if not outputs_file.is_file() or not (args.dir / "sim.json").is_file():
        print(f"{args.dir}: no simulated stack; create one with `scripts/sim-stack.sh up {args.dir}`", file=sys.stderr)
        return 2
    outputs = json.loads(outputs_file.read_text())
    upload_bundle(args.dir, outputs)
    text = user_data(outputs, model_name=args.model_name, port=args.port, grpc_port=args.grpc_port)
    code = host.boot(args.dir, stack.SERVING_ID, text)
    log = args.dir / stack.SERVING_ID / "cloud-init-output.log"
    if code != 0:
        print(f"the serving host's user data exited {code}; see {log}", file=sys.stderr)
        return 1
    print(
        f"serving host booted: {outputs['serving_url']} (journal: "
        f"{args.dir / stack.SERVING_ID / 'journal' / 'stratus-serve.service.log'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
