"""Generation on one NVIDIA GPU, in one short run: parity, model throughput and the served path.

Made for a lent GPU machine with a time budget of minutes: it needs only torch, numpy, scipy and
safetensors (no broker, no data set), prints a table last and writes everything as JSON.

1. ceilings: a large bf16 matrix product and a device-to-device copy, measured, next to the data
   sheet's dense FP16 peak;
2. parity: the served sampler (the distilled student, 4 steps, in-painting from a tail) on the
   same noise and tails, each backend against eager FP32 PyTorch on the same GPU, and the CPU;
3. model throughput: one window per patient (context encode + 4 student steps + decode) on
   tensors already on the GPU, per backend and batch: real-time patients, TFLOP/s, fraction of
   peak, memory per patient;
4. the served path: ``ContinuousGenerator.generate`` (per-request noise, conditions and splice
   on the host) at the same batches, so the host's share is visible.

    python3 bench/gpu_generate.py --out $OUT/gpu-generate.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.conditions import CardiacState
from models.sampling.samplers import get_sampler
from models.twin import TwinModel
from twin_engine.backends.runtime import attach_backend
from twin_engine.ops.bench import flops_per_window, peak_tflops
from twin_engine.worker.generator import ContinuousGenerator, GenRequest

MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
# (backend, precision, Inductor before capture); torch-cpu only takes part in the parity check
# (bf16 was measured on 2026-11-26: as fast as fp16, 9x its error; docs/BENCHMARKS.md)
VARIANTS = [("torch", "fp32", False), ("torch-cpu", "fp32", False), ("cuda-graphs", "fp16", False),
            ("cuda-graphs", "fp16", True)]
STATES = [CardiacState({"SR": 1.0}, 70.0), CardiacState({"AFIB": 1.0}, 110.0), CardiacState({"PVC": 0.8}, 80.0),
          CardiacState({"CLBBB": 1.0}, 65.0)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ceilings() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm = timed(lambda: a @ b, 10, 3)
    x = torch.randn(2**30 // 4, device="cuda")
    y = torch.empty_like(x)
    cp = timed(lambda: y.copy_(x), 10, 3)
    return {"bf16_matmul_tflops": 2 * 8192**3 / mm / 1e12, "copy_tb_per_s": 2 * x.numel() * 4 / cp / 1e12,
            "datasheet_dense_fp16_tflops": peak_tflops("cuda")}


def load(backend: str, precision: str, max_batch: int, compile: bool = False) -> TwinModel:
    model = TwinModel.load(MODEL, "cpu")
    device = "cpu" if backend == "torch-cpu" else "cuda"
    attach_backend(model, "torch" if backend.startswith("torch") else backend, device, Path("/tmp/twin-cache"),
                   max_batch, precision, compile)
    return model


def requests(model: TwinModel, gen: ContinuousGenerator, batch: int, tails: np.ndarray) -> list[GenRequest]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((batch, model.ibe.cfg.base_dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # base vectors live on the sphere
    return [GenRequest(base[i], STATES[i % len(STATES)], tails[i % len(tails)], gen.new_per_window, 1000 + i)
            for i in range(batch)]


def first_tails(n: int) -> np.ndarray:
    """Realistic tails: the end of a fresh window from the model itself."""
    model = load("torch", "fp32", n)
    gen = ContinuousGenerator(model, 4, "auto")
    reqs = requests(model, gen, n, np.zeros((1, gen.context, 12), np.float32))
    for r in reqs:
        r.tail = None
    out = gen.generate(reqs)
    return np.stack([o[-gen.context:] for o in out])


def parity(tails: np.ndarray, batch: int) -> list[dict]:
    rows, ref = [], None
    for backend, precision, compile in VARIANTS:
        try:
            model = load(backend, precision, batch, compile)
            gen = ContinuousGenerator(model, 4, "auto")
            out = np.stack(gen.generate(requests(model, gen, batch, tails)))
        except Exception as exc:  # one backend failing must not cost the others' figures
            rows.append({"backend": backend, "precision": precision, "compile": compile, "error": repr(exc)})
            print(f"parity {backend} {precision} compile={compile}: FAILED {exc!r}", flush=True)
            continue
        if ref is None:
            ref = out
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        rows.append({"backend": backend, "precision": precision, "compile": compile, "batch": batch,
                     "rel_l2_vs_torch_fp32_cuda": float(err),
                     "max_abs_units": float(np.abs(out - ref).max()), "finite": bool(np.isfinite(out).all())})
        print(f"parity {backend:12s} {precision} compile={compile}: rel {err:.2e}, max {rows[-1]['max_abs_units']:.4f} (z-score units)", flush=True)
    return rows


def engine_window(model: TwinModel, gen: ContinuousGenerator, batch: int, tails: np.ndarray):
    """One window per patient on GPU tensors: the work a TensorRT engine would do."""
    reqs = requests(model, gen, batch, tails)
    dev = model.device
    base = torch.from_numpy(np.stack([r.base for r in reqs])).to(dev)
    inten, cont = model.condition_tensors([r.state for r in reqs])
    t = torch.from_numpy(np.stack([r.tail for r in reqs]).transpose(0, 2, 1).copy()).to(dev)
    noise = torch.randn(batch, model.dit.cfg.latent_channels, model.tokens, device=dev)
    ddim = get_sampler("ddim", model.schedule)

    def run():
        with torch.no_grad():
            ctx = model.ae.encode(t)
            fn = model.x0_predictor(base, inten, cont, 1.0, ctx, net=model.student_denoiser)
            return model.decoder(ddim.sample(fn, noise, model.meta.student_steps))

    return run


def throughput(tails: np.ndarray, batches: list[int], flops_window: float, peak: float | None, measured: float,
               deadline: float, rows: list[dict], save) -> list[dict]:
    for backend, precision, compile in VARIANTS:
        if backend == "torch-cpu":
            continue
        model = load(backend, precision, max(batches), compile)
        gen = ContinuousGenerator(model, 4, "auto")
        window_s = gen.new_per_window / model.meta.fs
        for b in batches:
            if time.monotonic() > deadline:
                print("time budget spent: skipping the rest", flush=True)
                return rows
            try:
                run = engine_window(model, gen, b, tails)
                t0 = time.perf_counter()
                run()  # compiles and captures the graphs of this bucket
                sync()
                first = time.perf_counter() - t0
                torch.cuda.reset_peak_memory_stats()
                eng = timed(run, 5)
                mem = torch.cuda.max_memory_allocated() / b
                reqs = requests(model, gen, b, tails)
                served = timed(lambda reqs=reqs, gen=gen: gen.generate(reqs), 3)
            except Exception as exc:  # out of memory, or a capture that fails: record, go on
                rows.append({"backend": backend, "precision": precision, "compile": compile, "batch": b,
                             "error": repr(exc)[:500]})
                print(f"{backend} {precision} batch {b}: FAILED {exc!r}"[:500], flush=True)
                torch.cuda.empty_cache()
                continue
            row = {"backend": backend, "precision": precision, "compile": compile, "batch": b,
                   "first_call_s": first, "engine_s": eng, "engine_windows_per_s": b / eng, "engine_realtime_patients": b / eng * window_s,
                   "engine_tflops": b / eng * flops_window / 1e12,
                   "engine_fraction_of_datasheet_peak": b / eng * flops_window / 1e12 / peak if peak else None,
                   "engine_fraction_of_measured_matmul": b / eng * flops_window / 1e12 / measured,
                   "memory_per_patient_kb": mem / 1024,
                   "served_s": served, "served_realtime_patients": b / served * window_s,
                   "host_share_of_served": max(0.0, served - eng) / served}
            rows.append(row)
            save()
            print(f"{backend:12s} {precision} compile={compile!s:5s} b={b:6d}: first {first:5.1f} s, engine {row['engine_realtime_patients']:10,.0f} RT patients "
                  f"({row['engine_tflops']:.1f} TFLOP/s), served {row['served_realtime_patients']:9,.0f}, "
                  f"{row['memory_per_patient_kb']:.0f} kB/patient", flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", ".") + "/gpu-generate.json")
    ap.add_argument("--batches", default="1024,4096,16384,32768")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop adding rows after this long")
    ap.add_argument("--variants", default="", help="e.g. torch:fp32,cuda-graphs:fp16:inductor (default: all)")
    args = ap.parse_args()
    start = time.monotonic()
    if args.variants:  # a shorter run: only these (torch-cpu stays in the parity check)
        chosen = [(v.split(":")[0], v.split(":")[1], v.endswith(":inductor")) for v in args.variants.split(",")]
        VARIANTS[:] = chosen[:1] + [("torch-cpu", "fp32", False)] + chosen[1:]  # the first is the reference
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 here; precision is the variable
    batches = [int(b) for b in args.batches.split(",")]
    info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(),
            "tensorrt": __import__("importlib.util").util.find_spec("tensorrt") is not None}
    print(json.dumps(info), flush=True)
    result: dict = {"info": info}

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=1))

    result["ceilings"] = ceilings()
    print(json.dumps(result["ceilings"]), flush=True)
    cpu_model = TwinModel.load(MODEL, "cpu")
    f = flops_per_window(cpu_model)
    gen = ContinuousGenerator(cpu_model, 4, "auto")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        cpu_model.ae.encode(torch.zeros(1, 12, gen.context))
    f["context_encoder_gflop"] = fc.get_total_flops() / 1e9
    f["served_window_gflop"] = cpu_model.meta.student_steps * f["denoiser_gflop_per_call"] + \
        f["decoder_gflop_per_window"] + f["context_encoder_gflop"]
    result["flops"] = f
    print(json.dumps(f), flush=True)
    save()
    tails = first_tails(64)
    result["parity"] = parity(tails, 64)
    save()
    result["throughput"] = []
    throughput(tails, batches, f["served_window_gflop"] * 1e9, result["ceilings"]["datasheet_dense_fp16_tflops"],
               result["ceilings"]["bf16_matmul_tflops"], start + args.budget_s, result["throughput"], save)
    result["wall_s"] = time.monotonic() - start
    save()
    print("\n| backend | precision | Inductor | batch | engine RT patients | TFLOP/s | of peak | served RT patients "
          "| host share | kB/patient | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["throughput"]:
        if "error" in r:
            print(f"| {r['backend']} | {r['precision']} | {r['compile']} | {r['batch']} | failed: {r['error'][:80]} |")
            continue
        frac = r["engine_fraction_of_datasheet_peak"]
        print(f"| {r['backend']} | {r['precision']} | {r['compile']} | {r['batch']} | {r['engine_realtime_patients']:,.0f} | "
              f"{r['engine_tflops']:.1f} | {frac:.1%} | {r['served_realtime_patients']:,.0f} | "
              f"{r['host_share_of_served']:.0%} | {r['memory_per_patient_kb']:.0f} | {r['first_call_s']:.1f} |"
              if frac is not None else str(r))


if __name__ == "__main__":
    main()
