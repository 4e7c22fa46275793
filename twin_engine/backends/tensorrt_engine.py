"""Native TensorRT engines built from the exported ONNX graphs (FP16), cached on disk.

The cache key is the ONNX graph's folder (named by the model hash) plus the GPU name, the
TensorRT version and the largest batch; one optimisation profile spans batch 1 to that maximum
with its optimum at the scheduler's typical batch. Imported only when the TensorRT backend is
chosen, so machines without TensorRT never load it.

Status: written against the TensorRT 10 Python API; its parity test (tests/model/test_runtime.py)
runs only on a GPU machine with TensorRT, and has not run: the GPU machines lent so far (an H100
and an H200, 2026-11-26) could not install it. The cuda-graphs backend is the measured GPU path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    return table[dt]


class TrtGraph:
    def __init__(self, engine) -> None:
        import tensorrt as trt

        self.trt = trt
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    @classmethod
    def build_or_load(cls, onnx_path: Path, max_batch: int, fp16: bool = True) -> TrtGraph:
        import tensorrt as trt

        gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0))
        plan = onnx_path.with_name(f"{onnx_path.stem}-{gpu}-trt{trt.__version__}-b{max_batch}-{'fp16' if fp16 else 'fp32'}.plan")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        from models.export import hash_ok, record_hash

        if plan.is_file() and not hash_ok(plan):
            log.warning("cached engine %s does not match its recorded hash; rebuilding", plan)
        elif plan.is_file():
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is not None:
                return cls(engine)
            log.warning("cached engine %s unusable; rebuilding", plan)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            shape = list(inp.shape)
            lo, opt, hi = ([b] + shape[1:] for b in (1, max(1, max_batch // 2), max_batch))
            profile.set_shape(inp.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT engine build failed for {onnx_path}")
        plan.write_bytes(bytes(serialized))
        record_hash(plan)
        log.info("built TensorRT engine %s", plan)
        return cls(runtime.deserialize_cuda_engine(serialized))

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream()
        keep = []
        for name, a in zip(self.inputs, args, strict=True):
            t = a.to("cuda", _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        name = self.outputs[0]
        out = torch.empty(tuple(self.context.get_tensor_shape(name)),
                          dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(name)), device="cuda")
        self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out.float()
