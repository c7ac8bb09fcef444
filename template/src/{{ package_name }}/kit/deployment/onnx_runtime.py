"""An onnxruntime session for an exported model. Managed by the copier-lightning template.

No torch import here: `budget` measures the ONNX model in a process of its own, whose peak memory
should be a serving process's (onnxruntime and numpy), not torch's.
"""

from __future__ import annotations

from pathlib import Path


class MissingRuntime(RuntimeError):
    """onnxruntime is not installed."""


def onnx_session(path: Path, device: str = "cpu"):
    try:
        import onnxruntime
    except ModuleNotFoundError as missing:
        raise MissingRuntime('onnxruntime is not installed: pip install -e ".[export]"') from missing
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=providers)
