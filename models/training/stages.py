"""``twin-engine train autoencoder|encoder|erase|diffusion``: the stages of the twin model.

Each stage trains on the patient-wise training split of a PTB-XL-layout folder, writes
resumable state every ``save_every`` steps to the run folder, and its final weights into the
run's ``model.safetensors`` (all stages in one file, see models/checkpoint.py). Fixed seed;
mixed precision (bf16 autocast) on GPU.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.conditions import encode_states
from models.nets.base_extractor import info_nce
from models.training.trainer import (  # noqa: F401 (the stages' shared pieces, importable from here as before)
    Trainer,
    TrainingSet,
    crops,
    identity_distance,
    load_training_set,
    mean_of,
    reading_conditions,
    record_latents_and_bases,
    tensor,
    torch_device,
)
from models.twin import TwinModel

log = logging.getLogger(__name__)

DEFAULTS = {  # steps, batch size, learning rate
    "autoencoder": (3000, 32, 2e-3),
    "encoder": (1500, 64, 1e-3),
    "diffusion": (6000, 64, 1e-3),
    "distill": (3000, 64, 2e-4),  # models/training/distill.py
    "erase": (0, 0, 0.0),  # a closed-form fit, models/training/erasure.py
}


def train_autoencoder(model: TwinModel, ts: TrainingSet, tr: Trainer, batch: int) -> dict:
    w = model.meta.window

    def loss_fn(rng):
        idx = rng.integers(0, len(ts.signals), batch)
        x = tensor(crops(ts.signals[idx], w, rng)[0].transpose(0, 2, 1), tr.device)
        rec, kl = model.ae(x)
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + model.ae.cfg.kl_weight * kl

    losses = tr.run(loss_fn)
    model.eval()
    with torch.no_grad():  # unit-variance latents for the diffusion stage
        mus = [model.ae.encoder(tensor(ts.signals[i:i + 64].transpose(0, 2, 1), tr.device))[0]
               for i in range(0, min(len(ts.signals), 512), 64)]
        model.ae.latent_scale.fill_(float(torch.cat(mus).std()))
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None,
            "latent_scale": float(model.ae.latent_scale)}


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Views of one heart: amplitude gain per record, small noise, slow baseline wander."""
    b, n, _ = x.shape
    gain = rng.uniform(0.85, 1.15, (b, 1, 1))
    t = np.arange(n)[None, :, None] / 250.0
    wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4, (b, 1, 1)) * t + rng.uniform(0, 6.3, (b, 1, 1)))
    return (x * gain + wander + rng.normal(0, 0.03, x.shape)).astype(np.float32)


def train_encoder(model: TwinModel, ts: TrainingSet, tr: Trainer, batch: int) -> dict:
    w = model.meta.window
    model.ae.eval()
    by_patient: dict[int, list[int]] = {}
    for i, p in enumerate(ts.patients):
        by_patient.setdefault(int(p), []).append(i)
    inten_all, cont_all = encode_states(ts.states)

    def view(idx, rng):
        x = _augment(crops(ts.signals[idx], w, rng)[0], rng)
        z = model.ae.encode(tensor(x.transpose(0, 2, 1), tr.device))
        return model.ibe(z, tensor(inten_all[idx], tr.device), tensor(cont_all[idx], tr.device))

    def loss_fn(rng):
        a = rng.choice(len(ts.signals), batch, replace=False)
        # positive: another record of the same patient where there is one, else another window
        b = np.array([rng.choice(by_patient[int(ts.patients[i])]) for i in a])
        pa = tensor(ts.patients[a], tr.device)
        same = pa[:, None] == pa[None, :]
        return info_nce(view(a, rng), view(b, rng), model.ibe.logit_scale, same)

    losses = tr.run(loss_fn)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None,
            "temperature": float(1 / model.ibe.logit_scale.detach().exp())}


def record_weights(states, balance: float) -> np.ndarray:
    """Sampling probability per record: each record weighs its rarest statement's count to the
    power ``-balance`` (0: every record alike; 0.5: a statement on 30 records drawn about 5x as
    often per record as one on 800)."""
    if balance <= 0:
        return np.full(len(states), 1.0 / len(states))
    count: dict[str, int] = {}
    for s in states:
        for c, v in s.statements.items():
            if v >= 0.5:
                count[c] = count.get(c, 0) + 1
    w = np.array([max((count[c] ** -balance for c, v in s.statements.items() if v >= 0.5), default=1.0)
                  for s in states])
    return w / w.sum()


def train_diffusion(model: TwinModel, ts: TrainingSet, tr: Trainer, batch: int, p_drop: float = 0.1,
                    balance: float = 0.0, identity: float = 0.0) -> dict:
    """The denoiser's v-prediction loss; ``identity`` > 0 adds that weight times the cosine
    distance between the record's base vector and the frozen extractor's reading of the
    predicted clean latent, weighted by alpha-bar (the noisier the step, the less it counts)."""
    z_all, base_all = record_latents_and_bases(model, ts, tr.device)
    inten_all, cont_all = encode_states(ts.states)
    read_inten, read_cont = reading_conditions(ts, tr.device)
    # the last 100 steps' terms, kept as tensors: float() each step would wait for a GPU
    id_terms: collections.deque = collections.deque(maxlen=100)
    v_terms: collections.deque = collections.deque(maxlen=100)
    tok = model.tokens
    sched = model.schedule
    model.dit.train()
    p = record_weights(ts.states, balance) if balance > 0 else None

    def loss_fn(rng):
        # uniform draws as before (rng.integers): a run without balance repeats earlier runs
        idx = rng.choice(len(z_all), batch, p=p) if p is not None else rng.integers(0, len(z_all), batch)
        starts = rng.integers(0, z_all.shape[-1] - tok + 1, batch)
        z0 = torch.stack([z_all[i, :, s:s + tok] for i, s in zip(idx, starts, strict=True)])
        t = torch.from_numpy(rng.integers(0, sched.steps, batch)).to(tr.device)
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(tr.device)
        drop = torch.from_numpy(rng.random(batch) < p_drop).to(tr.device)
        cond = model.dit.condition_tokens(tensor(inten_all[idx], tr.device), tensor(cont_all[idx], tr.device), drop)
        z_t = sched.add_noise(z0, noise, t)
        v = model.dit(z_t, t, base_all[idx], cond)
        loss = F.mse_loss(v, sched.v_target(z0, noise, t))
        if identity > 0:
            dist = identity_distance(model, sched.x0_from_v(z_t, v, t), read_inten[idx], read_cont[idx], base_all[idx])
            id_terms.append(dist.detach().mean())
            v_terms.append(loss.detach())
            loss = loss + identity * (sched.ab(t) * dist).mean()
        return loss

    losses = tr.run(loss_fn)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None,
            **({"balance": balance} if balance > 0 else {}),
            **({"identity": identity, "final_identity_distance": mean_of(id_terms),
               "final_v_loss": mean_of(v_terms)} if identity > 0 else {})}


def run_stage(stage: str, out: Path, data: Path, size: str = "small", steps: int | None = None,
              batch: int | None = None, seed: int = 0, device: str = "auto",
              limit: int | None = None, dit_overrides: dict | None = None,
              distill_options: dict | None = None, lr: float | None = None, balance: float = 0.0,
              identity: float = 0.0) -> TwinModel:
    """Train one stage in ``out`` (continuing the earlier stages' weights found there)."""
    dev = torch_device(device)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    if (out / "config.json").is_file():
        model = TwinModel.load(out, "cpu").to(dev)
        if stage == "diffusion" and dit_overrides and not (out / "diffusion.state.pt").is_file():
            # ablation: a fresh denoiser variant on top of the run's autoencoder and extractor
            from dataclasses import replace as _replace

            from models.nets.dit import AdaXDiT

            model.dit = AdaXDiT(_replace(model.dit.cfg, **dit_overrides)).to(dev)
            model.set_backend("torch", model.dit, model.ae.decode)
    else:
        model = TwinModel.from_preset(size, **(dit_overrides or {})).to(dev)
    d_steps, d_batch, d_lr = DEFAULTS[stage]
    steps, batch, lr = steps or d_steps, batch or d_batch, lr or d_lr
    t0 = time.time()
    ts = load_training_set(data, fs=model.meta.fs, limit=limit)
    if stage == "erase":
        from models.training.erasure import fit_erasure

        model.requires_grad_(False).eval()
        return _finish(model, out, data, stage, fit_erasure(model, ts, dev), 0, 0, 0.0, seed, ts, dev, t0)
    if stage == "distill":
        from models.training.distill import distill

        model.requires_grad_(False).eval()
        report = distill(model, ts, out, train_steps=steps, batch=batch, lr=lr, seed=seed, device=dev,
                         **(distill_options or {}))
        return _finish(model, out, data, stage, report, steps, batch, lr, seed, ts, dev, t0)
    module = {"autoencoder": model.ae, "encoder": model.ibe, "diffusion": model.dit}[stage]
    model.train()
    for m in (model.ae, model.ibe, model.dit):
        m.requires_grad_(m is module)
    tr = Trainer(model, out, stage, steps, lr, [p for p in module.parameters()], dev, seed)
    fn = {"autoencoder": train_autoencoder, "encoder": train_encoder,
          "diffusion": functools.partial(train_diffusion, balance=balance, identity=identity)}[stage]
    report = fn(model, ts, tr, batch)
    model.requires_grad_(False).eval()
    return _finish(model, out, data, stage, report, steps, batch, lr, seed, ts, dev, t0)


def _finish(model: TwinModel, out: Path, data: Path, stage: str, report: dict, steps: int, batch: int,
            lr: float, seed: int, ts: TrainingSet, dev: torch.device, t0: float) -> TwinModel:
    """Record what was trained, how and on what, next to the weights."""
    info = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    if stage in info:  # a further round (distillation continues its student): keep the earlier ones
        info.setdefault(f"{stage}_earlier_rounds", []).append(info[stage])
    info[stage] = {**report, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                   "records": len(ts.signals), "patients": len(set(ts.patients.tolist())),
                   "wall_s": round(time.time() - t0, 1), "device": str(dev),
                   "hardware": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU x{torch.get_num_threads()} threads",
                   "data": str(data)}
    (out / "training.json").write_text(json.dumps(info, indent=2))
    model.meta.version = f"{out.name}-{stage}"
    model.cpu().save(out, {"training": info})
    return model


def main(args: argparse.Namespace, settings) -> int:
    out = Path(args.out or "runs/default")
    data = Path(args.data) if args.data else settings.data_dir / "ptbxl-subset"
    overrides = {"adaln-only": {"use_cross": False}, "cross-only": {"use_adaln": False},
                 "both": {"use_adaln": True, "use_cross": True}}.get(args.ablation)
    distill_options = {"steps": args.student_steps, "teacher_steps": args.teacher_steps,
                       "trajectories": args.trajectories, "guidance": args.guidance, "ema": args.ema,
                       "on_policy": args.on_policy, "student_guidance": args.student_guidance,
                       "identity": args.identity_weight} \
        if args.stage == "distill" else None
    run_stage(args.stage, out, data, size=args.size, steps=args.steps, batch=args.batch_size,
              seed=args.seed, device=settings.device, dit_overrides=overrides, distill_options=distill_options,
              lr=args.lr, balance=args.balance, identity=args.identity_weight)
    print(f"wrote {out}/model.safetensors")
    return 0
