"""An ONNX Runtime session behind the module contract the evaluator uses: an nn.Module whose forward runs the
session on the CPU (B×3×H×W float in [0, 1] → the file's output as a float32 tensor on the input's device)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harness.deploy.onnx_export import INPUT_NAME


def ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


class OrtModule(nn.Module):
    """`InferenceSession(path)` on the CPU with `threads` intra-op threads (default: torch's count when built, so
    an evaluation's `threads` holds for both runtimes) and one inter-op thread. No parameters, no BatchNorm:
    `eval()`/`train()` change nothing, and it cannot use per-image statistics (BatchNorm demo mode)."""

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime"):
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        self.runtime = runtime
        self.threads = int(threads or torch.get_num_threads())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name if inputs else INPUT_NAME

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime={self.runtime!r}, threads={self.threads}"
