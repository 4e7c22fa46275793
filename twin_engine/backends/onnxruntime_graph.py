"""ONNX Runtime sessions of the exported graphs, called like the torch modules they replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class OrtGraph:
    """An ONNX Runtime session that takes and returns torch tensors."""

    def __init__(self, path: Path, inputs: list[str], device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # no busy-waiting between operators: the threads share the cores with the event loop and
        # the broker (100 patients as fast as possible: 93 vs 65-87 segments/s with spinning)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] \
            if device == "cuda" else []
        self.session = ort.InferenceSession(str(path), opts, providers=providers + ["CPUExecutionProvider"])
        self.inputs = inputs

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(self.inputs, args, strict=True)}
        out = self.session.run(None, feeds)[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(args[0].device)
