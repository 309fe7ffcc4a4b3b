"""KServe's own Python model server serving an ONNX file, the peer of `stratus serve` in bench/serve.py.

Runs in the benchmark's KServe virtualenv (bench/kserve-requirements.txt), never in the project's:

    .venv/bench-kserve/bin/python bench/_kserve_model.py --model-file model.onnx --name mlp-binary \\
        --http_port 8080 --grpc_port 8081

A `kserve.Model` whose `predict` runs ONNX Runtime with the threading `stratus serve` uses (one
intra-op thread, one inter-op thread, no spinning), in `kserve.ModelServer` with one worker, REST
and gRPC. The reply honours the request's binary-output choice, as KServe's own models do.
"""

from __future__ import annotations

import argparse

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


class OnnxModel(kserve.Model):
    def __init__(self, name: str, model_file: str):
        super().__init__(name)
        self.model_file = model_file
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_file, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        binary = payload.use_binary_outputs
        outputs = []
        for name, array in zip(names, self.session.run(names, feed), strict=True):
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(
            model_name=self.name,
            infer_outputs=outputs,
            response_id=payload.id or generate_uuid(),  # as KServe's own model servers do
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], description=__doc__)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--name", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer(workers=1).start([OnnxModel(args.name, args.model_file)])
