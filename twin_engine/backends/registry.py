"""The generation backends by name: one record each, read by configuration (which names are
valid), selection (``runtime.choose_backend``), attachment and ``doctor``.

A backend swaps ``model.denoiser`` / ``model.decoder`` (and the distilled student's denoiser)
for its own implementations of the same callables, torch tensors in and out. Importing this
module is cheap: each backend imports its framework only when attached.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run on this machine; the message says what is missing."""


@dataclass(frozen=True)
class Machine:
    """What this machine offers a backend."""

    cuda: bool
    tensorrt: bool
    onnxruntime: bool

    @staticmethod
    def probe(device_setting: str) -> Machine:
        import torch

        return Machine(device_setting != "cpu" and torch.cuda.is_available(),
                       importlib.util.find_spec("tensorrt") is not None,
                       importlib.util.find_spec("onnxruntime") is not None)


@dataclass(frozen=True)
class AttachOptions:
    cache_dir: Path
    max_batch: int = 64
    precision: str = "fp16"  # cuda-graphs: fp16, bf16, fp32
    compile: bool | None = None  # cuda-graphs: Inductor before capture (default: where Triton is)


@dataclass(frozen=True)
class Backend:
    """One way to run the model's networks.

    Args:
        name: the configuration value.
        device: the device it serves on for a ``Machine``; BackendUnavailable saying what is
            missing where it cannot run.
        attach: puts the backend's callables on a model: ``attach(model, device, options)``.
        compiles: its first call compiles or captures, so it is warmed up before serving.
    """

    name: str
    device: Callable[[Machine], str]
    attach: Callable[[Any, str, AttachOptions], None]
    compiles: bool = False


def _any_device(m: Machine) -> str:
    return "cuda" if m.cuda else "cpu"


def _needs_gpu(what: str) -> Callable[[Machine], str]:
    def device(m: Machine) -> str:
        if not m.cuda:
            raise BackendUnavailable(f"{what} backend needs an NVIDIA GPU (cuda=no)")
        return "cuda"
    return device


def _tensorrt_device(m: Machine) -> str:
    if not (m.cuda and m.tensorrt):
        raise BackendUnavailable("tensorrt backend needs an NVIDIA GPU and the 'gpu' extra "
                                 f"(cuda={'yes' if m.cuda else 'no'}, tensorrt={'yes' if m.tensorrt else 'no'})")
    return "cuda"


def _ort_device(m: Machine) -> str:
    if not m.onnxruntime:
        raise BackendUnavailable("onnxruntime backend needs the onnxruntime package")
    return _any_device(m)


def _attach_torch(model, device: str, o: AttachOptions) -> None:
    model.to(device)
    model.set_backend("torch", model.dit, model.ae.decode, model.student)


def _attach_torch_compile(model, device: str, o: AttachOptions) -> None:
    # Inductor graphs of the denoisers, dynamic in the batch: 1.2-1.3x on the 2-core CPU
    # (docs/BENCHMARKS.md) for ~30 s of compiling on first use; the decoder stays eager
    import torch

    model.to(device)
    compiled = [torch.compile(n, dynamic=True) if n is not None else None for n in (model.dit, model.student)]
    model.set_backend("torch-compile", compiled[0], model.ae.decode, compiled[1])


def _attach_cuda_graphs(model, device: str, o: AttachOptions) -> None:
    from twin_engine.backends.cuda_graphs import GraphedCall

    compile = importlib.util.find_spec("triton") is not None if o.compile is None else o.compile
    model.to("cuda")
    student = GraphedCall(model.student, o.max_batch, o.precision, compile) if model.student is not None else None
    model.set_backend("cuda-graphs", GraphedCall(model.dit, o.max_batch * 2, o.precision, compile),  # CFG doubles it
                      GraphedCall(model.ae.decode, o.max_batch, o.precision, compile), student)


def onnx_folder(model, cache_dir: Path) -> Path:
    """The model's exported ONNX graphs, exported again where missing, cut short or changed."""
    from models.export import export_onnx, hash_ok, model_hash

    folder = Path(cache_dir) / "onnx" / model_hash(model)
    names = ["denoiser", "decoder"] + (["student"] if model.student is not None else [])
    if not all(hash_ok(folder / f"{n}.onnx") for n in names):
        log.info("exporting ONNX graphs to %s", folder)
        export_onnx(model, folder)
    return folder


def _attach_onnxruntime(model, device: str, o: AttachOptions) -> None:
    from twin_engine.backends.onnxruntime_graph import OrtGraph

    folder, inputs = onnx_folder(model, o.cache_dir), ["z", "t", "base", "cond"]
    student = OrtGraph(folder / "student.onnx", inputs, device) if model.student is not None else None
    model.set_backend("onnxruntime", OrtGraph(folder / "denoiser.onnx", inputs, device),
                      OrtGraph(folder / "decoder.onnx", ["z"], device), student)


def _attach_tensorrt(model, device: str, o: AttachOptions) -> None:
    from twin_engine.backends.tensorrt_engine import TrtGraph

    folder = onnx_folder(model, o.cache_dir)
    model.to("cuda")
    # no guidance batch for the student: it runs at the batch itself
    student = TrtGraph.build_or_load(folder / "student.onnx", o.max_batch) if model.student is not None else None
    model.set_backend("tensorrt", TrtGraph.build_or_load(folder / "denoiser.onnx", o.max_batch * 2),  # CFG doubles it
                      TrtGraph.build_or_load(folder / "decoder.onnx", o.max_batch), student)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", _any_device, _attach_torch),
    Backend("torch-compile", _any_device, _attach_torch_compile, compiles=True),
    Backend("cuda-graphs", _needs_gpu("cuda-graphs"), _attach_cuda_graphs, compiles=True),
    Backend("onnxruntime", _ort_device, _attach_onnxruntime),
    Backend("tensorrt", _tensorrt_device, _attach_tensorrt, compiles=True),
)}
BACKEND_NAMES = tuple(BACKENDS)
