"""Inference backends: which one serves, and plugging it into the model.

Every backend provides the same two callables on ``TwinModel`` (``denoiser(z, t, base, cond)``
and ``decoder(z)``, torch tensors in and out), so samplers, batching and the service never know
which one runs. PyTorch is the reference; ONNX Runtime and TensorRT run exported graphs of the
same weights, cached under a key of the model hash (and GPU and TensorRT version for engines).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from twin_engine.backends.registry import (  # noqa: F401 (BackendUnavailable: raised to callers)
    BACKEND_NAMES,
    BACKENDS,
    AttachOptions,
    BackendUnavailable,
    Machine,
)
from twin_engine.config import Settings

log = logging.getLogger(__name__)


def choose_backend(settings: Settings) -> tuple[str, str]:
    """(backend, device) that would serve with these settings, or BackendUnavailable."""
    machine = Machine.probe(settings.device)
    if settings.backend != "auto":
        backend = BACKENDS.get(settings.backend)
        if backend is None:
            raise BackendUnavailable(f"unknown backend {settings.backend!r} (known: {', '.join(BACKEND_NAMES)})")
        return backend.name, backend.device(machine)
    # auto: on a GPU, PyTorch compiled and replayed from CUDA graphs in FP16 (the model alone, on
    # an H200: 1.5x eager FP32 from the graphs and half precision, 3.2-3.5x with Inductor's
    # fusion; output within 0.4% of FP32: docs/BENCHMARKS.md, GPU). TensorRT stays opt-in: it
    # could not be installed on the GPU machines this was measured on, so its parity test has
    # never run. On the CPU, ONNX Runtime: in isolation it is no faster than eager PyTorch, but in
    # the service the generation thread shares the interpreter with the event loop, and one ONNX
    # Runtime call per denoiser step holds the GIL far less than eager PyTorch's per-operator
    # dispatch: 1,000 patients as fast as possible, alternating runs: median 95 vs 83 segments/s
    # (docs/bench/backend-ab-cpu.txt)
    if machine.cuda:
        return "cuda-graphs", "cuda"
    return ("onnxruntime" if machine.onnxruntime else "torch"), "cpu"


# the best measured batch limits: the 2-core CPU's throughput peaks at 16; on an H100 and an
# H200, generation gains little beyond a few thousand while each batch takes longer
BATCH_LIMIT = {"cpu": 16, "cuda": 4096}


def batch_limit(settings: Settings, device: str) -> int:
    """``max_batch``, or for 0 (the default) the measured best for ``device``."""
    return settings.max_batch or BATCH_LIMIT["cuda" if device.startswith("cuda") else "cpu"]


# backends whose first call compiles or captures: warmed up before serving
WARM_UP = tuple(name for name, b in BACKENDS.items() if b.compiles)


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
    """Swap ``model.denoiser`` / ``model.decoder`` for the named backend's implementations.

    Args:
        backend, device: as ``choose_backend`` returns them.
        cache_dir: where exported graphs and engines are kept (by model hash).
        max_batch: the largest batch a captured graph or engine takes.
        precision, compile: cuda-graphs' (Inductor before capture; default: where Triton is
            installed); TensorRT builds FP16.
    """
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}")
    BACKENDS[backend].attach(model, device, AttachOptions(Path(cache_dir), max_batch, precision, compile))
