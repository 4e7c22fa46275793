"""``twin-engine doctor``: what this machine can run, checked rather than assumed."""

from __future__ import annotations

import importlib.util
import platform
import sys

from twin_engine.config import Settings


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "installed"))
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        return f"broken ({exc.__class__.__name__}: {exc})"


# the databases read from the data dir, and what goes without each
DATASETS = {
    "ptbxl-subset": "references, training and evaluation",
    "ludb": "mV references, amplitude and lead models",
    "mitdb": "MIT-BIH references, rhythm evaluation",
    "nstdb": "bw/ma/em noise artifacts",
    "cpsc2018": "mV references, amplitude model, cross-site evaluation",
    "cpsc2021": "AF episodes in the rhythm evaluation",
}


def report(settings: Settings) -> list[tuple[str, str]]:
    """Rows of (item, finding)."""
    rows: list[tuple[str, str]] = [("python", f"{sys.version.split()[0]} ({platform.machine()})")]
    torch_v = _version("torch")
    rows.append(("torch", torch_v or "not installed"))
    cuda = "no"
    if torch_v and not torch_v.startswith("broken"):
        import torch

        if torch.cuda.is_available():
            cuda = f"yes: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        else:
            cuda = f"no (torch build: {'cuda ' + torch.version.cuda if torch.version.cuda else 'cpu'})"
        rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("cuda", cuda))
    rows.append(("tensorrt", _version("tensorrt") or "not installed"))
    ort = _version("onnxruntime")
    if ort and not ort.startswith("broken"):
        import onnxruntime

        ort += " providers=" + ",".join(onnxruntime.get_available_providers())
    rows.append(("onnxruntime", ort or "not installed"))
    try:
        from stream.kafka.embedded import broker_binary

        rows.append(("broker binary", str(broker_binary())))
    except Exception as exc:
        rows.append(("broker binary", f"MISSING: {exc}"))
    data = settings.data_dir
    found = [name for name in DATASETS if (data / name).is_dir()]
    missing = [f"{name} ({DATASETS[name]})" for name in DATASETS if name not in found]
    rows.append(("data dir", f"{data} ({', '.join(found) if found else 'NOT FOUND'})"))
    if found and missing:
        rows.append(("data missing", "; ".join(missing)))
    model = settings.model_path
    rows.append(("model", f"{model} ({'present' if (model / 'model.safetensors').is_file() else 'missing'})"))
    try:
        from twin_engine.backends.runtime import choose_backend

        backend, why = choose_backend(settings)
        rows.append(("generation backend", f"{backend} ({why})"))
    except Exception as exc:
        rows.append(("generation backend", f"unavailable: {exc}"))
    kafka = settings.kafka.bootstrap_servers or "embedded Tansu broker (started on demand)"
    rows.append(("kafka", kafka))
    return rows


def print_report(settings: Settings) -> None:
    rows = report(settings)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
