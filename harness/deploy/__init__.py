"""Students as deployed: ONNX export, ONNX Runtime fp32 and int8 sessions behind the Localizer contract.

`onnx_export` (export, checks, int8 quantisation, the card beside each file), `build` (calibration on decoder2's
views, export-or-reuse of a localizer for a runtime), `runtime` (`OrtModule`: an InferenceSession as an nn.Module);
`python -m harness.deploy export` is the command.
"""
from harness.deploy.onnx_export import FP32, INT8, OPSET, RUNTIMES, TOLERANCE, DeployCard, DeployError, read_card
from harness.deploy.runtime import OrtModule, ort_version

__all__ = ["FP32", "INT8", "OPSET", "RUNTIMES", "TOLERANCE", "DeployCard", "DeployError", "read_card", "OrtModule",
           "ort_version"]
