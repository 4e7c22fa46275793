"""What every training stage shares: the training set, the trainer (optimiser, EMA, resumable
state, progress) and the latents and base vectors of whole records. ``models.training.stages`` runs the
stages; ``models.training.distill`` fits the few-step student with the same pieces (no import between
the two runs back)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import load_training_state, save_training_state
from models.conditions import CardiacState, encode_states
from models.data.ptbxl import PTBXL
from models.rpeaks import label_heart_rate
from models.twin import TwinModel

log = logging.getLogger(__name__)

@dataclass
class TrainingSet:
    signals: np.ndarray  # (N, samples, leads), samples divisible by 8
    states: list[CardiacState]
    patients: np.ndarray
    ecg_ids: np.ndarray


def load_training_set(data: Path, ids: list[int] | None = None, fs: int = 250,
                      limit: int | None = None) -> TrainingSet:
    """Records of the training split (or ``ids``), with their stated condition and measured HR."""
    db = PTBXL(data, sampling_rate=fs)
    if ids is None:
        ids, _ = db.split()
    ids = ids[:limit] if limit else ids
    sigs, states, pats = [], [], []
    for rec in db.records(ids):
        n = rec.signal.shape[0] // 8 * 8
        sigs.append(rec.signal[:n])
        hr = label_heart_rate(rec.signal, fs)
        states.append(CardiacState.from_scp(rec.scp_codes, hr, rec.age, rec.sex))
        pats.append(rec.patient_id)
    return TrainingSet(np.stack(sigs), states, np.array(pats), np.array(ids))


def crops(x: np.ndarray, length: int, rng: np.random.Generator, step: int = 8) -> tuple[np.ndarray, np.ndarray]:
    starts = rng.integers(0, (x.shape[1] - length) // step + 1, size=len(x)) * step
    return np.stack([x[i, s:s + length] for i, s in enumerate(starts)]), starts


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _progress(stage: str, step: int, total: int, loss: float, t0: float, every: int) -> None:
    if step % every == 0 or step == total:
        rate = step / max(1e-9, time.time() - t0)
        bar = "#" * int(30 * step / total)
        print(f"\r{stage} [{bar:<30}] {step}/{total} loss={loss:.4f} {rate:.1f} it/s", end="", flush=True)
        if step == total:
            print()


class Trainer:
    """One stage's loop: the stage supplies ``loss(batch_rng)``; this handles the rest."""

    def __init__(self, model: TwinModel, out: Path, stage: str, steps: int, lr: float,
                 params, device: torch.device, seed: int, ema: float = 0.0) -> None:
        """``ema`` > 0 keeps an exponential moving average of ``params`` (that decay per step,
        less in the first steps) and leaves it in the parameters at the end: with a noisy loss,
        the average of the last few hundred steps generalises better than the last step."""
        self.model, self.out, self.stage, self.steps = model, out, stage, steps
        self.device = device
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01)
        self.state_path = out / f"{stage}.state.pt"
        self.start, stored_ema = load_training_state(self.state_path, model, self.opt)
        self.ema_decay = ema
        self.ema = None
        if ema > 0:  # resumed: the stored average; fresh (or stored without one): the weights now
            self.ema = [e.to(p.device) for e, p in zip(stored_ema, self.params, strict=True)] \
                if stored_ema is not None else [p.detach().clone() for p in self.params]
        if self.start:
            log.info("resuming %s at step %d", stage, self.start)
        self.rng = np.random.default_rng(seed + self.start)
        torch.manual_seed(seed + self.start)
        self.lr = lr

    def run(self, loss_fn, save_every: int = 500) -> list[float]:
        losses: list[float] = []
        t0 = time.time()
        amp = self.device.type == "cuda"
        for step in range(self.start + 1, self.steps + 1):
            warm = min(1.0, step / min(200, max(1, self.steps // 10)))
            cos = 0.5 * (1 + math.cos(math.pi * step / self.steps))
            for g in self.opt.param_groups:
                g["lr"] = self.lr * warm * (0.1 + 0.9 * cos)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(self.rng)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            if self.ema is not None:
                decay = min(self.ema_decay, (1 + step) / (10 + step))  # early on, the start weighs little
                with torch.no_grad():
                    for e, p in zip(self.ema, self.params, strict=True):
                        e.lerp_(p, 1.0 - decay)
            losses.append(loss.item())
            _progress(self.stage, step, self.steps, float(np.mean(losses[-50:])), t0, 10)
            if step % save_every == 0 or step == self.steps:
                save_training_state(self.state_path, step, self.model, self.opt, self.ema)
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema, strict=True):
                    p.copy_(e)
        return losses


def mean_of(terms) -> float:
    """The mean of a run's last loss terms, kept as tensors; nan where a resumed run had no step left."""
    return float(torch.stack(list(terms)).mean()) if terms else float("nan")


def tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def identity_distance(model: TwinModel, x0: torch.Tensor, inten: torch.Tensor, cont: torch.Tensor,
                      base: torch.Tensor) -> torch.Tensor:
    """Per row, the cosine distance between ``base`` and what the extractor reads from the clean
    latent window ``x0`` with reading conditions ``inten``, ``cont`` (``reading_conditions``):
    the identity term of the diffusion and distillation stages."""
    read = model.ibe.pool(model.ibe(x0, inten, cont)[None])
    return 1 - F.cosine_similarity(read.float(), base, dim=-1)


def reading_conditions(ts: TrainingSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the extractor reads each record with, as ``TwinModel.encode`` reads a reference: no
    statement stated, the record's own heart rate (intensities, continuous), on ``device``."""
    inten, cont = encode_states([CardiacState({}, s.heart_rate) for s in ts.states])
    return tensor(inten, device), tensor(cont, device)


@torch.no_grad()
def record_latents_and_bases(model: TwinModel, ts: TrainingSet, device: torch.device
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of whole records and one base vector per record, made as ``TwinModel.encode``
    makes a reference's: all its windows, no statement stated, its own heart rate, pooled (and
    erased) by the extractor, so the denoiser learns from the vectors the service hands it."""
    model.eval()
    zs, bases = [], []
    for i in range(0, len(ts.signals), 64):
        z = model.ae.encode(tensor(ts.signals[i:i + 64].transpose(0, 2, 1), device))
        zs.append(z)
    z = torch.cat(zs)
    inten, cont = reading_conditions(ts, device)
    tok, starts = model.tokens, model.reading_starts(z.shape[-1])
    for i in range(0, len(z), 64):
        zb = z[i:i + 64]
        per = torch.stack([model.ibe(zb[..., s:s + tok], inten[i:i + 64], cont[i:i + 64]) for s in starts])
        bases.append(model.ibe.pool(per))
    return z, torch.cat(bases)
