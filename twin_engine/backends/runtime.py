"""Inference backends: which one serves, and plugging it into the model.

Every backend provides the same two callables on ``TwinModel`` (``denoiser(z, t, base, cond)``
and ``decoder(z)``, torch tensors in and out), so samplers, batching and the service never know
which one runs. PyTorch is the reference; ONNX Runtime and TensorRT run exported graphs of the
same weights, cached under a key of the model hash (and GPU and TensorRT version for engines).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from twin_engine.config import Settings

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run on this machine; the message says what is missing."""


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def choose_backend(settings: Settings) -> tuple[str, str]:
    """(backend, device) that would serve with these settings, or BackendUnavailable."""
    want = settings.backend
    has_cuda = settings.device != "cpu" and _cuda_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if want == "tensorrt":
        if not (has_cuda and has_trt):
            raise BackendUnavailable(
                "tensorrt backend needs an NVIDIA GPU and the 'gpu' extra "
                f"(cuda={'yes' if has_cuda else 'no'}, tensorrt={'yes' if has_trt else 'no'})")
        return "tensorrt", "cuda"
    if want == "onnxruntime":
        if not has_ort:
            raise BackendUnavailable("onnxruntime backend needs the onnxruntime package")
        return "onnxruntime", "cuda" if has_cuda else "cpu"
    if want in ("torch", "torch-compile"):
        return want, "cuda" if has_cuda else "cpu"
    if want == "cuda-graphs":
        if not has_cuda:
            raise BackendUnavailable("cuda-graphs backend needs an NVIDIA GPU (cuda=no)")
        return "cuda-graphs", "cuda"
    # auto: on a GPU, PyTorch compiled and replayed from CUDA graphs in FP16 (the model alone, on
    # an H200: 1.5x eager FP32 from the graphs and half precision, 3.2-3.5x with Inductor's
    # fusion; output within 0.4% of FP32: docs/BENCHMARKS.md, GPU). TensorRT stays opt-in: it
    # could not be installed on the GPU machines this was measured on, so its parity test has
    # never run. On the CPU, ONNX
    # Runtime: in isolation it is no faster than eager PyTorch, but in the service the generation
    # thread shares the interpreter with the event loop, and one ONNX Runtime call per denoiser
    # step holds the GIL far less than eager PyTorch's per-operator dispatch: 1,000 patients as
    # fast as possible, alternating runs: median 95 vs 83 segments/s (docs/bench/backend-ab-cpu.txt)
    if has_cuda:
        return "cuda-graphs", "cuda"
    return ("onnxruntime" if has_ort else "torch"), "cpu"


# the best measured batch limits: the 2-core CPU's throughput peaks at 16; on an H100 and an
# H200, generation gains little beyond a few thousand while each batch takes longer
BATCH_LIMIT = {"cpu": 16, "cuda": 4096}


def batch_limit(settings: Settings, device: str) -> int:
    """``max_batch``, or for 0 (the default) the measured best for ``device``."""
    return settings.max_batch or BATCH_LIMIT["cuda" if device.startswith("cuda") else "cpu"]


# backends whose first call compiles or captures: warmed up before serving
WARM_UP = ("cuda-graphs", "torch-compile", "tensorrt")


def warm_up(model, settings: Settings, batch: int = 8) -> float:
    """Seconds for one small generation with the serving sampler. Run before serving, so that a
    backend's one-time cost (compiling and capturing: 10-13 s on an H100) is paid at start and
    not by the first deadlines, including those of streams restored mid-sequence."""
    import time

    from models.conditions import CardiacState

    t0 = time.perf_counter()
    base = np.full((batch, model.ibe.cfg.base_dim), model.ibe.cfg.base_dim ** -0.5, np.float32)
    model.generate(base, [CardiacState()] * batch, settings.steps, 0, settings.sampler, settings.guidance_scale)
    return time.perf_counter() - t0


def log_choice(model, settings: Settings) -> tuple[str, str]:
    """(backend, device) that ``model`` serves with, logged with what was configured."""
    backend = model.backend
    device = "cuda" if backend == "tensorrt" or model.device.type == "cuda" else "cpu"
    detail = {"cuda-graphs": f", {settings.precision}", "tensorrt": ", fp16"}.get(backend, "")
    log.info("generation backend: %s on %s%s, batches up to %d (configured backend=%s device=%s)",
             backend, device, detail, batch_limit(settings, device), settings.backend, settings.device)
    return backend, device


def attach_backend(model, backend: str, device: str, cache_dir: Path, max_batch: int = 64,
                   precision: str = "fp16", compile: bool | None = None) -> None:
    """Swap ``model.denoiser`` / ``model.decoder`` for the chosen backend's implementations.

    ``precision`` and ``compile`` (Inductor before capture; default: where Triton is installed)
    apply to cuda-graphs; TensorRT builds FP16."""
    if backend == "torch":
        model.to(device)
        model.set_backend("torch", model.dit, model.ae.decode, model.student)
        return
    if backend == "cuda-graphs":
        from twin_engine.backends.cuda_graphs import GraphedCall

        if compile is None:
            compile = importlib.util.find_spec("triton") is not None
        model.to("cuda")
        student = GraphedCall(model.student, max_batch, precision, compile) if model.student is not None else None
        model.set_backend("cuda-graphs", GraphedCall(model.dit, max_batch * 2, precision, compile),  # CFG doubles it
                          GraphedCall(model.ae.decode, max_batch, precision, compile), student)
        return
    if backend == "torch-compile":
        # Inductor graphs of the denoisers, dynamic in the batch: 1.2-1.3x on the 2-core CPU
        # (docs/BENCHMARKS.md) for ~30 s of compiling on first use; the decoder stays eager
        model.to(device)
        compiled = [torch.compile(n, dynamic=True) if n is not None else None for n in (model.dit, model.student)]
        model.set_backend("torch-compile", compiled[0], model.ae.decode, compiled[1])
        return
    from models.export import export_onnx, hash_ok, model_hash

    folder = Path(cache_dir) / "onnx" / model_hash(model)
    names = ["denoiser", "decoder"] + (["student"] if model.student is not None else [])
    if not all(hash_ok(folder / f"{n}.onnx") for n in names):  # missing, cut short or changed since
        log.info("exporting ONNX graphs to %s", folder)
        export_onnx(model, folder)
    student = None
    if backend == "onnxruntime":
        inputs = ["z", "t", "base", "cond"]
        if model.student is not None:
            student = OrtGraph(folder / "student.onnx", inputs, device)
        model.set_backend("onnxruntime", OrtGraph(folder / "denoiser.onnx", inputs, device),
                          OrtGraph(folder / "decoder.onnx", ["z"], device), student)
    elif backend == "tensorrt":
        from twin_engine.backends.tensorrt_engine import TrtGraph

        model.to("cuda")
        if model.student is not None:  # no guidance batch: the student runs at the batch itself
            student = TrtGraph.build_or_load(folder / "student.onnx", max_batch)
        model.set_backend("tensorrt",
                          TrtGraph.build_or_load(folder / "denoiser.onnx", max_batch * 2),  # CFG doubles it
                          TrtGraph.build_or_load(folder / "decoder.onnx", max_batch), student)
    else:
        raise BackendUnavailable(f"unknown backend {backend!r}")


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
