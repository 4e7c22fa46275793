"""PyTorch on an NVIDIA GPU without the launch overhead: one CUDA graph per batch bucket.

The networks are small (a 4-block DiT of width 128): at the batches the scheduler forms, eager
PyTorch spends its time launching a few hundred kernels per call, not computing. A captured
graph replays them in one launch. Inputs are copied into static buffers padded up to the next
bucket (powers of two, as TensorRT's optimisation profiles span a range), so a handful of graphs
cover every batch; batches beyond the largest bucket run in chunks of it. Half precision
(FP16 by default, the precision the TensorRT path builds in) runs under autocast, so weights stay
FP32 and the parity against eager FP32 is measured, not assumed (docs/BENCHMARKS.md, GPU).
Compiling the networks with Inductor before capture costs a compile on first use of each new
shape class and more than doubles throughput (same page).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# beyond this, eager kernels overflow int32 indexing (seen at 32,768 on an H100 and an H200)
# and throughput no longer grows (docs/BENCHMARKS.md, GPU): larger batches run in chunks
LARGEST_BUCKET = 16384


def buckets(max_batch: int, smallest: int = 8) -> list[int]:
    """Powers of two from ``smallest`` up to the first one that holds ``max_batch`` (at most
    ``LARGEST_BUCKET``)."""
    out = [smallest]
    while out[-1] < min(max_batch, LARGEST_BUCKET):
        out.append(out[-1] * 2)
    return out


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], output: torch.Tensor) -> None:
        self.graph, self.inputs, self.output = graph, inputs, output


class GraphedCall:
    """``fn(*tensors) -> tensor`` replayed from a CUDA graph per (bucket, trailing shapes)."""

    def __init__(self, fn: Callable[..., torch.Tensor], max_batch: int, dtype: str = "fp16",
                 compile: bool = False) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need an NVIDIA GPU")
        # compiled: Inductor fuses the norms, modulations and activations between the matrix
        # products, which is where this small network spends its time (2.3x on an H200)
        self.eager, self.dtype = fn, DTYPES[dtype]
        self.fn = torch.compile(fn) if compile else fn
        self.buckets = buckets(max_batch)
        self.graphs: dict[tuple, _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle()  # all buckets share one memory pool

    def _run(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.fn(*args)

    def _capture(self, bucket: int, args: tuple[torch.Tensor, ...]) -> _Captured:
        inputs = [torch.zeros((bucket, *a.shape[1:]), dtype=a.dtype, device="cuda") for a in args]
        for s, a in zip(inputs, args, strict=True):  # real rows, so warm-up sees valid values
            s[:len(a)] = a
            s[len(a):] = a[-1:]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            try:
                for _ in range(2):  # warm-up outside the graph: compiling, cuBLAS handles
                    self._run(*inputs)
            except Exception as exc:  # a compiler that fails here must not stop generation
                if self.fn is self.eager:
                    raise
                log.warning("compiled network failed (%s: %s); capturing it uncompiled", type(exc).__name__, exc)
                self.fn = self.eager
                for _ in range(2):
                    self._run(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the service's other threads (a registration encoding reference ECGs)
        # may use the GPU while the generation thread captures
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), torch.no_grad():
            output = self._run(*inputs)
        return _Captured(graph, inputs, output)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        args = tuple(a.to("cuda", non_blocking=True) for a in args)
        b = args[0].shape[0]
        top = self.buckets[-1]
        if b > top:
            return torch.cat([self(*(a[i:i + top] for a in args)) for i in range(0, b, top)])
        bucket = next(k for k in self.buckets if k >= b)
        key = (bucket, *(tuple(a.shape[1:]) for a in args), *(a.dtype for a in args))
        cap = self.graphs.get(key)
        if cap is None:
            cap = self.graphs[key] = self._capture(bucket, args)
        for s, a in zip(cap.inputs, args, strict=True):
            s[:b].copy_(a)
        cap.graph.replay()
        # a copy: the next replay overwrites the static output
        return cap.output[:b].to(torch.float32, copy=True)
