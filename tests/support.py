"""Helpers shared by test packages: a real tiny exported artifact, the emulator's AWS environment."""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.repository.artifact import write_manifest
from runtime.train.config import ModelConfig
from runtime.train.models import WithSigmoid, build_mlp

NUM_FEATURES = 8


def aws_test_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3 (and child processes) at the emulator server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def build_artifact(dest: Path, seed: int = 0, model_name: str = "tiny") -> Path:
    """A real exported version directory: a seeded sigmoid MLP as ONNX, plus its manifest."""
    torch.manual_seed(seed)
    model = WithSigmoid(build_mlp(NUM_FEATURES, ModelConfig(hidden_sizes=(16,)))).eval()
    dest.mkdir(parents=True)
    torch.onnx.export(
        model,
        (torch.randn(2, NUM_FEATURES),),
        str(dest / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    write_manifest(
        dest,
        {
            "model_name": model_name,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
            "provenance": {"seed": seed},
        },
    )
    return dest
