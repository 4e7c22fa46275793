"""``twin-engine bench``: ``generate`` (the model per backend), ``serve``/``ws`` (the service
through the broker) and ``stress`` (the shipped stress suite); figures, never pass/fail."""

from twin_engine.ops.bench.generate import bench_generate, flops_per_window, peak_tflops, table
from twin_engine.ops.bench.serve import bench_serve, bench_ws, null_generate
from twin_engine.ops.bench.stress import bench_stress

__all__ = ["bench_generate", "bench_serve", "bench_stress", "bench_ws", "flops_per_window", "null_generate", "peak_tflops", "table"]
