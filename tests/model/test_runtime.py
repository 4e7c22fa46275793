"""Backends: every backend matches PyTorch on the same noise; the GPU paths skip on CPU machines."""

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from models.conditions import CardiacState
from models.export import example_inputs
from models.twin import TwinModel, to_device
from twin_engine.backends.runtime import BackendUnavailable, attach_backend, choose_backend
from twin_engine.config import load_settings

ORT_TOL = 1e-4  # fp32 graph vs eager: only operator-order rounding
TRT_TOL = 5e-2  # fp16 engine: half precision through every layer


def test_choice_on_this_machine():
    s = load_settings(env={})
    backend, device = choose_backend(s)
    # a GPU: PyTorch from CUDA graphs; the CPU: ONNX Runtime (a core dependency), faster inside the service
    assert (backend, device) == (("cuda-graphs", "cuda") if torch.cuda.is_available() else ("onnxruntime", "cpu"))
    if not torch.cuda.is_available():
        for name in ("tensorrt", "cuda-graphs"):
            with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
                choose_backend(load_settings(env={"TWIN_ENGINE_BACKEND": name}))


def test_warm_up_runs_the_serving_sampler(distilled_model_dir):
    from twin_engine.backends.runtime import warm_up

    model = TwinModel.load(distilled_model_dir)
    calls = []
    student = model.student_denoiser
    model.set_backend("torch", model.dit, model.ae.decode, lambda *a: calls.append(a[0].shape) or student(*a))
    assert warm_up(model, load_settings(env={}), batch=3) > 0
    # the distilled student at its step count, on the batch asked for: what serving compiles first
    assert calls == [torch.Size([3, model.dit.cfg.latent_channels, model.tokens])] * model.meta.student_steps


def test_batch_limit_defaults_to_the_measured_best_per_device():
    from twin_engine.backends.runtime import batch_limit

    auto = load_settings(env={})
    assert (batch_limit(auto, "cpu"), batch_limit(auto, "cuda"), batch_limit(auto, "cuda:1")) == (16, 4096, 4096)
    explicit = load_settings(env={"TWIN_ENGINE_MAX_BATCH": "64"})
    assert (batch_limit(explicit, "cpu"), batch_limit(explicit, "cuda")) == (64, 64)


def test_onnxruntime_parity(tiny_model_dir, tmp_path):
    ref = TwinModel.load(tiny_model_dir)
    ort_model = TwinModel.load(tiny_model_dir)
    attach_backend(ort_model, "onnxruntime", "cpu", tmp_path)
    assert ort_model.backend == "onnxruntime"
    for batch in (1, 3, 8):  # dynamic batch
        z, t, b, c = example_inputs(ref, batch)
        with torch.no_grad():
            np.testing.assert_allclose(ort_model.denoiser(z, t, b, c).numpy(), ref.dit(z, t, b, c).numpy(), atol=ORT_TOL)
            np.testing.assert_allclose(ort_model.decoder(z).numpy(), ref.ae.decode(z).numpy(), atol=ORT_TOL)
    base = ref.encode([np.random.default_rng(0).standard_normal((1024, 12)).astype(np.float32)])
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    a = ref.generate(np.stack([base, base]), states, steps=4, seed=3)
    b = ort_model.generate(np.stack([base, base]), states, steps=4, seed=3)
    np.testing.assert_allclose(a, b, atol=10 * ORT_TOL)
    # the export is cached by model hash: a second attach reuses the files
    files = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")}
    attach_backend(ort_model, "onnxruntime", "cpu", tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*.onnx")) == files
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")} == stamps  # reused, not exported again
    # a cached graph that is not what was written (cut short, or swapped) is exported again, not loaded
    decoder = next(tmp_path.rglob("decoder.onnx"))
    decoder.write_bytes(decoder.read_bytes()[:1000])
    attach_backend(ort_model, "onnxruntime", "cpu", tmp_path)
    from models.export import hash_ok

    assert hash_ok(decoder) and decoder.stat().st_size > 1000
    with torch.no_grad():
        np.testing.assert_allclose(ort_model.decoder(z).numpy(), ref.ae.decode(z).numpy(), atol=ORT_TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT path needs an NVIDIA GPU and the 'gpu' extra")
def test_tensorrt_parity(tiny_model_dir, tmp_path):
    ref = TwinModel.load(tiny_model_dir, "cuda")
    trt_model = TwinModel.load(tiny_model_dir)
    attach_backend(trt_model, "tensorrt", "cuda", tmp_path, max_batch=8)
    z, t, b, c = (x.cuda() for x in example_inputs(TwinModel.load(tiny_model_dir), 4))  # made on the CPU
    with torch.no_grad():
        torch.testing.assert_close(trt_model.denoiser(z, t, b, c), ref.dit(z, t, b, c), atol=TRT_TOL, rtol=TRT_TOL)
        torch.testing.assert_close(trt_model.decoder(z), ref.ae.decode(z), atol=TRT_TOL, rtol=TRT_TOL)


def test_cuda_graph_buckets_cover_every_batch_up_to_the_largest():
    from twin_engine.backends.cuda_graphs import LARGEST_BUCKET, buckets

    assert buckets(8) == [8]
    assert buckets(13) == [8, 16]
    for max_batch in (1, 100, 5000, LARGEST_BUCKET, 10**6):
        bs = buckets(max_batch)
        assert all(b2 == 2 * b1 for b1, b2 in zip(bs, bs[1:], strict=False))  # a batch pads to less than twice itself
        assert bs[-1] >= min(max_batch, LARGEST_BUCKET) and bs[-1] <= LARGEST_BUCKET


CUDA_GRAPH_TOL = 2e-2  # FP16 under autocast; the default model measured 3.5e-3 relative (docs/BENCHMARKS.md)


def test_to_device_stacks_rows_or_takes_one_array():
    rows = [np.full((3, 2), i, np.float32) for i in range(4)]
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        a, b = to_device(rows, torch.device(device)), to_device(np.stack(rows), torch.device(device))
        assert a.device.type == device and a.shape == (4, 3, 2) and a.dtype == torch.float32
        torch.testing.assert_close(a, b)
        assert float(a[3].sum()) == 18.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_generation_matches_the_cpu(distilled_model_dir):
    """Base vectors, conditions, noise and tails reach the GPU through page-locked buffers with
    asynchronous copies: eager PyTorch there gives the CPU's ECG for the same seeds."""
    cpu, gpu = TwinModel.load(distilled_model_dir), TwinModel.load(distilled_model_dir, "cuda")
    base = np.ones((3, cpu.ibe.cfg.base_dim), np.float32) / np.sqrt(cpu.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120), CardiacState({"PVC": 1.0}, 80)]
    a, g = cpu.generate(base, states, 4, [3, 4, 5], "distilled"), gpu.generate(base, states, 4, [3, 4, 5], "distilled")
    assert np.linalg.norm(a - g) / np.linalg.norm(a) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_parity(distilled_model_dir, tmp_path, compile):
    ref = TwinModel.load(distilled_model_dir, "cuda")
    graphed = TwinModel.load(distilled_model_dir)
    attach_backend(graphed, "cuda-graphs", "cuda", tmp_path, max_batch=8, compile=compile)
    cpu = TwinModel.load(distilled_model_dir)  # example inputs are made on the CPU
    for batch in (1, 5, 8, 13):  # padded into buckets of 8 and 16, and chunked beyond the largest
        z, t, b, c = (x.cuda() for x in example_inputs(cpu, batch))
        with torch.no_grad():
            torch.testing.assert_close(graphed.student_denoiser(z, t, b, c), ref.student(z, t, b, c),
                                       atol=CUDA_GRAPH_TOL, rtol=CUDA_GRAPH_TOL)
            torch.testing.assert_close(graphed.decoder(z), ref.ae.decode(z), atol=CUDA_GRAPH_TOL, rtol=CUDA_GRAPH_TOL)
    base = np.ones((2, ref.ibe.cfg.base_dim), np.float32) / np.sqrt(ref.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    a, g = ref.generate(base, states, 4, 3, "distilled"), graphed.generate(base, states, 4, 3, "distilled")
    assert np.linalg.norm(a - g) / np.linalg.norm(a) < CUDA_GRAPH_TOL


def test_onnxruntime_parity_of_the_distilled_student(distilled_model_dir, tmp_path):
    ref = TwinModel.load(distilled_model_dir)
    ort_model = TwinModel.load(distilled_model_dir)
    attach_backend(ort_model, "onnxruntime", "cpu", tmp_path)
    z, t, b, c = example_inputs(ref, 3)
    with torch.no_grad():
        np.testing.assert_allclose(ort_model.student_denoiser(z, t, b, c).numpy(), ref.student(z, t, b, c).numpy(),
                                   atol=ORT_TOL)
    base = np.ones((2, ref.ibe.cfg.base_dim), np.float32) / np.sqrt(ref.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    np.testing.assert_allclose(ref.generate(base, states, 4, 3, "distilled"),
                               ort_model.generate(base, states, 4, 3, "distilled"), atol=10 * ORT_TOL)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_torch_compile_parity(distilled_model_dir):
    ref = TwinModel.load(distilled_model_dir)
    comp = TwinModel.load(distilled_model_dir)
    attach_backend(comp, "torch-compile", "cpu", distilled_model_dir)
    assert comp.backend == "torch-compile"
    base = np.ones((3, ref.ibe.cfg.base_dim), np.float32) / np.sqrt(ref.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120), CardiacState({"PVC": 1.0}, 70)]
    for sampler in ("distilled", "dpmpp2m"):
        np.testing.assert_allclose(comp.generate(base, states, 4, 5, sampler), ref.generate(base, states, 4, 5, sampler),
                                   atol=10 * ORT_TOL)


def test_auto_falls_back_to_torch_when_its_pick_cannot_be_set_up(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """An automatic pick that fails to set up (say, an ONNX export error) serves with PyTorch and
    says so; a backend configured by name fails instead of quietly running something else."""
    import twin_engine.ops.app as app

    real = app.attach_backend

    def attach(model, backend, *args, **kwargs):
        if backend != "torch":
            raise RuntimeError("export failed")
        return real(model, backend, *args, **kwargs)

    monkeypatch.setattr(app, "attach_backend", attach)
    monkeypatch.setattr(app, "choose_backend", lambda s: ("onnxruntime", "cpu"))
    s = load_settings(env={})
    s.model_path, s.cache_dir = tiny_model_dir, tmp_path
    with caplog.at_level("WARNING"):
        model = app.load_model(s)
    assert model.backend == "torch"
    assert "onnxruntime could not be set up" in caplog.text and "export failed" in caplog.text
    s.backend = "onnxruntime"
    with pytest.raises(RuntimeError, match="export failed"):
        app.load_model(s)


def test_auto_backend_that_fails_its_warm_up_falls_back_to_torch(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """A GPU whose compiler or graph capture fails on the first call must not take the service
    down: the warm-up finds out at start, and auto falls back to PyTorch."""
    import twin_engine.ops.app as app

    def warm_up(model, settings):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(app, "choose_backend", lambda s: ("torch-compile", "cpu"))
    monkeypatch.setattr(app, "warm_up", warm_up)
    s = load_settings(env={})
    s.model_path, s.cache_dir = tiny_model_dir, tmp_path
    with caplog.at_level("WARNING"):
        model = app.load_model(s)
    assert model.backend == "torch" and "torch-compile could not be set up" in caplog.text
    s.backend = "torch-compile"
    with pytest.raises(RuntimeError, match="capture failed"):
        app.load_model(s)
