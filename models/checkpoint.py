"""Model files: one ``model.safetensors`` (all stages, prefixed keys) and ``config.json``.

safetensors only: loading never unpickles. The config records the sha256 of the weights file,
so a truncated or altered file is refused before any tensor is used, and every tensor's shape is
checked against the architecture the config describes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(RuntimeError):
    """A model file is missing, corrupt or does not match its configuration."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(folder: str | Path, modules: dict[str, nn.Module], config: dict, half: bool = False) -> Path:
    """Write the named modules' state dicts and the config (with the weights' hash).

    ``half`` stores floating-point parameters as fp16 (half the file; loading upcasts); buffers
    (fitted statistics: the latent scale, the base-vector erasure, whose whitening entries reach
    16) stay as they are."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    if half:
        buffers = {f"{name}.{k}" for name, m in modules.items() for k, _ in m.named_buffers()}
        tensors = {k: v.half() if v.is_floating_point() and k not in buffers else v for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS))
    config = {**config, "sha256": file_sha256(folder / WEIGHTS), "stages": sorted(modules),
              "weights_dtype": "float16" if half else "float32"}
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"no model config at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"corrupt model config {path}: {exc}") from exc


def load_into(folder: str | Path, modules: dict[str, nn.Module]) -> dict:
    """Load weights into already-built modules; refuse hash, key or shape mismatches."""
    folder = Path(folder)
    config = read_config(folder)
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise CheckpointError(f"no weights at {wpath}")
    if config.get("sha256") != file_sha256(wpath):
        raise CheckpointError(f"{wpath} does not match the sha256 in its config (corrupt or replaced)")
    try:
        tensors = load_file(str(wpath))
    except Exception as exc:
        raise CheckpointError(f"cannot read {wpath}: {exc}") from exc
    for name, m in modules.items():
        prefix = name + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = m.state_dict()
        missing = set(own) - set(sd)
        unexpected = set(sd) - set(own)
        if missing or unexpected:
            raise CheckpointError(
                f"{wpath}: stage {name!r} does not match its architecture "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        for k, v in sd.items():
            if own[k].shape != v.shape:
                raise CheckpointError(f"{wpath}: {name}.{k} has shape {tuple(v.shape)}, "
                                      f"architecture expects {tuple(own[k].shape)}")
        m.load_state_dict(sd)
    return config


def load_stage_weights(path: str | Path, module: nn.Module, prefix: str) -> None:
    """Load one stage from a training run's file (used between training stages)."""
    tensors = load_file(str(path))
    module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})


def save_training_state(path: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                        ema: list[torch.Tensor] | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "ema": ema}, tmp)
    tmp.replace(path)


def load_training_state(path: Path, model: nn.Module,
                        opt: torch.optim.Optimizer) -> tuple[int, list[torch.Tensor] | None]:
    """The step to resume at (0: fresh) and the stored moving average, if any."""
    if not path.is_file():
        return 0, None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return int(state["step"]), state.get("ema")
