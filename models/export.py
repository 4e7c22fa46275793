"""ONNX export of the per-generation networks: the denoiser, the decoder and the distilled
student where the model has one.

Both with a dynamic batch axis, so one file serves every batch size the scheduler forms; the
condition tokens are computed in PyTorch (an embedding lookup) and passed in.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import file_sha256
from models.twin import TwinModel


class _Denoiser(nn.Module):
    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, z, t, base, cond):
        return self.dit(z, t, base, cond)


class _Decoder(nn.Module):
    def __init__(self, model: TwinModel) -> None:
        super().__init__()
        self.ae = model.ae

    def forward(self, z):
        return self.ae.decode(z)


def model_hash(model: TwinModel) -> str:
    """Content hash of the weights: the key of every compiled artefact built from them."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def example_inputs(model: TwinModel, batch: int = 2) -> tuple[torch.Tensor, ...]:
    c = model.dit.cfg
    cond = model.dit.condition_tokens(torch.zeros(batch, c.n_codes), torch.zeros(batch, 4))
    return (torch.randn(batch, c.latent_channels, model.tokens), torch.full((batch,), 500, dtype=torch.long),
            torch.randn(batch, c.base_dim), cond)


def export_onnx(model: TwinModel, folder: str | Path, opset: int = 17) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    paths = {"denoiser": folder / "denoiser.onnx", "decoder": folder / "decoder.onnx"}
    nets = {"denoiser": model.dit}
    if model.student is not None:
        paths["student"], nets["student"] = folder / "student.onnx", model.student
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, net in nets.items():
            torch.onnx.export(_Denoiser(net), example_inputs(model), str(paths[name]), opset_version=opset,
                              input_names=["z", "t", "base", "cond"], output_names=["v"], dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in ("z", "t", "base", "cond", "v")})
        z = torch.randn(2, model.dit.cfg.latent_channels, model.tokens)
        torch.onnx.export(_Decoder(model), (z,), str(paths["decoder"]), opset_version=opset,
                          input_names=["z"], output_names=["x"], dynamo=False,
                          dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}})
    for path in paths.values():
        record_hash(path)
    return paths


MANIFEST = "sha256.json"  # beside cached graphs and engines: what each file hashed to when written


def record_hash(path: str | Path) -> None:
    """Note ``path``'s SHA-256 in its folder's manifest, once it is written whole."""
    path = Path(path)
    manifest = path.parent / MANIFEST
    try:
        entries = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except ValueError:
        entries = {}
    entries[path.name] = file_sha256(path)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    tmp.replace(manifest)


def hash_ok(path: str | Path) -> bool:
    """Whether ``path`` is what was written there (its manifest hash): a cached ONNX graph or
    engine cut short by a crash, or changed since, is built again rather than loaded."""
    path = Path(path)
    try:
        entries = json.loads((path.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and isinstance(entries, dict) and entries.get(path.name) == file_sha256(path)
