"""Which inference backend generation runs on, and why.

One interface for every backend (``models.twin.TwinModel.generate`` over a batch); this module
only decides which one serves and logs the reason, so that an operator reading the log knows
whether the GPU path was taken.
"""

from __future__ import annotations

import importlib.util
import logging

from twin_engine.config import Settings

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run on this machine; the message says what is missing."""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(settings: Settings) -> tuple[str, str]:
    """(backend, device) pair as a human-readable choice: ``("torch", "cpu: no CUDA")``."""
    want = settings.backend
    has_cuda = settings.device != "cpu" and _cuda_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if want == "tensorrt":
        if not (has_cuda and has_trt):
            raise BackendUnavailable(
                "tensorrt backend needs an NVIDIA GPU and the 'gpu' extra "
                f"(cuda={'yes' if has_cuda else 'no'}, tensorrt={'yes' if has_trt else 'no'})"
            )
        return "tensorrt", "cuda"
    if want == "onnxruntime":
        if not has_ort:
            raise BackendUnavailable("onnxruntime backend needs the 'onnx' extra")
        return "onnxruntime", "cuda" if has_cuda else "cpu"
    if want == "torch":
        return "torch", "cuda" if has_cuda else "cpu"
    # auto: PyTorch on whatever device exists; the TensorRT path is opt-in until its parity
    # tests have run on the GPU it would serve on.
    if has_cuda:
        return "torch", "cuda"
    return "torch", "cpu"


def log_choice(settings: Settings) -> tuple[str, str]:
    backend, device = choose_backend(settings)
    log.info("generation backend: %s on %s (configured backend=%s device=%s)",
             backend, device, settings.backend, settings.device)
    return backend, device
