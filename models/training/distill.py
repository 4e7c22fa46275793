"""``twin-engine train distill``: a few-step student that follows the guided 50-step teacher.

Why this kind of distillation: the denoiser is small and the sampling ODE is deterministic
(DPM-Solver++ with classifier-free guidance), so the teacher's trajectories can be computed once
and stored. The student then learns, for each of its own DDIM steps t_i -> t_(i+1), the clean
estimate that lands a single DDIM step exactly on the teacher's state at t_(i+1) (the target of
progressive distillation, Salimans & Ho 2022, taken over many teacher steps at once). Training
needs no teacher forward passes, so on two CPU cores it costs about as much as fine-tuning.

Guidance is folded in: the teacher's targets are guided, the student sees only the conditional
input, so each student step is one forward pass at batch B instead of 2B. Half the trajectories
are in-painted continuations (the first quarter of the window fixed to a context, as the
service generates), so the student learns the continuation task too; for those the loss skips
the fixed tokens.
"""

from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.conditions import encode_states
from models.training.trainer import (
    Trainer,
    TrainingSet,
    identity_distance,
    mean_of,
    record_latents_and_bases,
    tensor,
)
from models.twin import TwinModel


@dataclass
class Trajectories:
    """Teacher states at the student's timesteps: ``xs[:, i]`` at ``grid[i]`` (last: clean)."""

    xs: torch.Tensor  # (N, K+1, C, T)
    base: torch.Tensor  # (N, base_dim)
    inten: torch.Tensor  # (N, codes)
    cont: torch.Tensor  # (N, 4)
    context: torch.Tensor  # (N, C, k) fixed first tokens (zeros where unused)
    has_context: torch.Tensor  # (N,) bool
    grid: list[int]  # K student timesteps, then -1
    # per-sample timesteps where they differ between samples (on-policy pairs): (N, K+1)
    ts: torch.Tensor | None = None


def student_grid(model: TwinModel, steps: int) -> list[int]:
    return model.schedule.timesteps(steps) + [-1]


def teacher_walk(a: int, b: int, substeps: int) -> list[int]:
    """The teacher's timesteps from ``a`` down to ``b`` in ``substeps`` solver steps."""
    return [int(t) for t in np.unique(np.round(np.linspace(a, b, substeps + 1)).astype(int))[::-1]]


def _sources(model: TwinModel, ts: TrainingSet):
    """What every draw picks from: the records' latents and base vectors, and their encoded states."""
    z_all, base_all = record_latents_and_bases(model, ts, model.device)
    inten_all, cont_all = encode_states(ts.states, model.meta.vocab)
    return z_all, base_all, inten_all, cont_all


def _draw(rng: np.random.Generator, b: int, z_all: torch.Tensor, inten_all: np.ndarray, cont_all: np.ndarray,
          tok: int, context_share: float, dev: torch.device):
    """One batch of draws: records (for base vector and state), a context window from each, and
    which of them continue that context (the starting noise is drawn after, ``_noise``)."""
    k_ctx = tok // 4
    idx = rng.integers(0, len(z_all), b)
    starts = rng.integers(0, z_all.shape[-1] - tok + 1, b)
    ctx = torch.stack([z_all[i, :, s:s + k_ctx] for i, s in zip(idx, starts, strict=True)])
    has = torch.from_numpy(rng.random(b) < context_share)
    inten, cont = tensor(inten_all[idx], dev), tensor(cont_all[idx], dev)
    return idx, ctx, has, inten, cont


def _noise(rng: np.random.Generator, b: int, z_all: torch.Tensor, tok: int, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((b, z_all.shape[1], tok)).astype(np.float32)).to(dev)


def _keep(out: dict[str, list[torch.Tensor]], xs, base, inten, cont, ctx, has) -> None:
    """Append one batch to ``out`` on the CPU (contexts zeroed where unused)."""
    out["xs"].append(xs.cpu())
    out["base"].append(base.cpu())
    out["inten"].append(inten.cpu())
    out["cont"].append(cont.cpu())
    out["context"].append(torch.where(has[:, None, None], ctx.cpu(), torch.zeros_like(ctx.cpu())))
    out["has"].append(has)


def _advance(model: TwinModel, sampler, x: torch.Tensor, mask: torch.Tensor, has: torch.Tensor,
             cond: tuple[torch.Tensor, ...], walk: list[int], guidance: float, net) -> torch.Tensor:
    """The samples of ``x`` in ``mask`` along ``walk``: one call for those continuing a context,
    one for the rest (``_x0_fn`` takes one context for a whole batch)."""
    base, inten, cont, ctx = cond
    moved = torch.empty_like(x[mask])
    for part in (has, ~has):
        sel = mask & part
        if sel.any():
            fn = model.x0_predictor(base[sel], inten[sel], cont[sel], guidance, ctx[sel] if part is has else None, net=net)
            moved[part[mask]] = sampler.sample(fn, x[sel], walk)
    return moved


@torch.no_grad()
def teacher_trajectories(model: TwinModel, ts: TrainingSet, n: int, steps: int, teacher_steps: int,
                         guidance: float, seed: int = 0, batch: int = 128,
                         context_share: float = 0.5, student_guidance: float | None = None) -> Trajectories:
    """Run the guided DPM-Solver++ teacher on ``n`` draws of (record's base vector, record's
    state, noise) and keep its states at the student's ``steps`` timesteps.

    ``student_guidance``: the teacher is instead the current student itself, one DDIM step per
    interval, with classifier-free guidance at that scale on top of the guidance it has folded
    in (its null-condition pass against its conditional one). Fitting those states folds the
    extra guidance into the student: one forward pass per step again, where the guided
    student needs two."""
    from models.sampling.samplers import get_sampler

    rng, dev, tok = np.random.default_rng(seed), model.device, model.tokens
    z_all, base_all, inten_all, cont_all = _sources(model, ts)
    grid = student_grid(model, steps)
    per_interval = max(1, round(teacher_steps / steps))
    sampler = get_sampler("dpmpp2m", model.schedule)
    net = None
    if student_guidance is not None:
        if model.student is None or model.meta.student_steps != steps:
            raise ValueError(f"folding guidance needs a {steps}-step student to start from (a first round)")
        sampler, per_interval, guidance, net = get_sampler("ddim", model.schedule), 1, student_guidance, model.student
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("xs", "base", "inten", "cont", "context", "has")}
    t0 = time.time()
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        idx, ctx, has, inten, cont = _draw(rng, b, z_all, inten_all, cont_all, tok, context_share, dev)
        x = _noise(rng, b, z_all, tok, dev)
        states = [x]
        every = torch.ones_like(has)
        for i in range(steps):
            x = _advance(model, sampler, x, every, has, (base_all[idx], inten, cont, ctx),
                         teacher_walk(grid[i], grid[i + 1], per_interval), guidance, net)
            states.append(x)
        _keep(out, torch.stack(states, 1), base_all[idx], inten, cont, ctx, has)
        done = lo + b
        print(f"\rteacher trajectories {done}/{n} ({done / (time.time() - t0):.1f}/s)", end="", flush=True)
    print()
    cat = {k: torch.cat(v) for k, v in out.items()}
    return Trajectories(cat["xs"], cat["base"], cat["inten"], cat["cont"], cat["context"], cat["has"], grid)


@torch.no_grad()
def onpolicy_pairs(model: TwinModel, ts: TrainingSet, n: int, steps: int, teacher_steps: int,
                   guidance: float, seed: int = 0, batch: int = 256, context_share: float = 0.5) -> Trajectories:
    """Pairs on the student's own path (DAgger for distillation): for a random interval i, the
    student's state at its timestep t_i, reached by its own steps from noise, and the guided
    teacher's solution from there to t_(i+1). The trajectory targets only ever show the student
    the teacher's states, so its errors compound over its steps; these teach it to steer back.
    Costs one teacher interval per pair, a quarter of a 4-step trajectory."""
    from models.sampling.samplers import get_sampler

    if model.student is None:
        raise ValueError("on-policy distillation needs a student to start from (a first round)")
    rng, dev, tok = np.random.default_rng(seed), model.device, model.tokens
    z_all, base_all, inten_all, cont_all = _sources(model, ts)
    grid = student_grid(model, steps)
    per_interval = max(1, round(teacher_steps / steps))
    teacher, ddim = get_sampler("dpmpp2m", model.schedule), get_sampler("ddim", model.schedule)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("xs", "ts", "base", "inten", "cont", "context", "has")}
    t0 = time.time()
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        idx, ctx, has, inten, cont = _draw(rng, b, z_all, inten_all, cont_all, tok, context_share, dev)
        base = base_all[idx]
        interval = torch.from_numpy(rng.integers(0, steps, b))
        x = _noise(rng, b, z_all, tok, dev)

        for j in range(steps - 1):  # the student's own steps, as far as each pair's interval
            mask = interval > j
            if mask.any():
                x[mask] = _advance(model, ddim, x, mask, has, (base, inten, cont, ctx), [grid[j], grid[j + 1]],
                                   1.0, model.student)
        x_b = torch.empty_like(x)
        for i in range(steps):
            mask = interval == i
            if mask.any():
                x_b[mask] = _advance(model, teacher, x, mask, has, (base, inten, cont, ctx),
                                     teacher_walk(grid[i], grid[i + 1], per_interval), guidance, None)
        g = torch.tensor(grid)
        _keep(out, torch.stack([x, x_b], 1), base, inten, cont, ctx, has)
        out["ts"].append(torch.stack([g[interval], g[interval + 1]], 1))
        done = lo + b
        print(f"\ron-policy pairs {done}/{n} ({done / (time.time() - t0):.1f}/s)", end="", flush=True)
    print()
    cat = {k: torch.cat(v) for k, v in out.items()}
    return Trajectories(cat["xs"], cat["base"], cat["inten"], cat["cont"], cat["context"], cat["has"],
                        [grid[0], -1], cat["ts"])


def coarsen(traj: Trajectories, grid: list[int]) -> Trajectories:
    """The same trajectories at a coarser student grid nested in theirs (the 2-step grid
    999, 499 is in the 4-step one): a 1- or 2-step student reuses the 4-step teacher runs, whose
    walks between the shared points are the same solver steps."""
    if not set(grid) <= set(traj.grid):
        raise ValueError(f"grid {grid} is not nested in {traj.grid}")
    keep = [traj.grid.index(t) for t in grid]
    return Trajectories(traj.xs[:, keep], traj.base, traj.inten, traj.cont, traj.context, traj.has_context, grid)


def _cached(out: Path, model: TwinModel, steps: int, teacher_steps: int, n: int, seed: int) -> Trajectories | None:
    """A stored trajectory chunk for this student grid, or one at a finer nested grid, coarsened."""
    grid = student_grid(model, steps)
    for k in (steps, 2 * steps, 4 * steps, 8 * steps):
        path = out / f"distill-trajectories-{k}x{teacher_steps}-n{n}-s{seed}.pt"
        if path.is_file():
            traj = Trajectories(**torch.load(path, weights_only=True))
            if set(grid) <= set(traj.grid):  # rounding can leave a multiple's grid not nested
                return coarsen(traj, grid)
    return None


def ddim_x0_target(sched, x_a: torch.Tensor, x_b: torch.Tensor, t_a: torch.Tensor,
                   t_b: torch.Tensor) -> torch.Tensor:
    """The clean estimate for which one DDIM step from (x_a, t_a) lands on x_b at t_b."""
    def coef(t):
        ab = sched.ab(t).to(x_a.device).view(-1, 1, 1)
        return ab.sqrt(), (1 - ab).sqrt()

    a_a, s_a = coef(t_a)
    a_b, s_b = coef(t_b)
    return (x_b - (s_b / s_a) * x_a) / (a_b - s_b * a_a / s_a)


def train_student(model: TwinModel, traj: Trajectories, tr: Trainer, student: torch.nn.Module,
                  batch: int, identity: float = 0.0) -> dict:
    """Fit ``student`` so that its DDIM steps follow the teacher's trajectories. ``identity`` > 0
    adds the diffusion stage's identity term (``train_diffusion``) on the student's clean
    prediction: that weight times the frozen extractor's cosine distance to the row's base
    vector, weighted by alpha-bar."""
    sched, dev = model.schedule, tr.device
    id_terms: collections.deque = collections.deque(maxlen=100)  # tensors: float() would wait for a GPU
    # read as encode() reads a reference (``reading_conditions``): no statement, the row's own rate
    read_inten, read_cont = torch.zeros_like(traj.inten), torch.zeros_like(traj.cont)
    read_cont[:, 0] = traj.cont[:, 0]
    k = traj.xs.shape[1] - 1
    k_ctx = traj.context.shape[-1]
    grid = torch.tensor(traj.grid)

    def loss_fn(rng):
        idx = torch.from_numpy(rng.integers(0, len(traj.xs), batch))
        i = torch.from_numpy(rng.integers(0, k, batch))
        x_a, x_b = traj.xs[idx, i].to(dev), traj.xs[idx, i + 1].to(dev)
        if traj.ts is not None:
            t_a, t_b = traj.ts[idx, i].to(dev), traj.ts[idx, i + 1].to(dev)
        else:
            t_a, t_b = grid[i].to(dev), grid[i + 1].to(dev)
        target = ddim_x0_target(sched, x_a, x_b, t_a, t_b)
        cond = model.dit.condition_tokens(traj.inten[idx].to(dev), traj.cont[idx].to(dev))
        x0 = sched.x0_from_v(x_a, student(x_a, t_a, traj.base[idx].to(dev), cond), t_a)
        weight = torch.ones_like(x0)
        has = traj.has_context[idx].to(dev)
        weight[has, :, :k_ctx] = 0.0  # fixed by in-painting at sampling time
        loss = (weight * (x0 - target) ** 2).sum() / weight.sum()
        if identity > 0:
            dist = identity_distance(model, x0, read_inten[idx].to(dev), read_cont[idx].to(dev), traj.base[idx].to(dev))
            id_terms.append(dist.detach().mean())
            loss = loss + identity * (sched.ab(t_a) * dist).mean()
        return loss

    losses = tr.run(loss_fn)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None,
            **({"identity": identity, "final_identity_distance": mean_of(id_terms)} if identity > 0 else {})}


def distill(model: TwinModel, ts: TrainingSet, out: Path, steps: int = 4, teacher_steps: int = 48,
            guidance: float = 1.5, trajectories: int = 6144, train_steps: int = 3000, batch: int = 64,
            lr: float = 2e-4, seed: int = 0, device: torch.device | None = None, chunk: int = 6144,
            ema: float = 0.999, on_policy: bool = False, student_guidance: float | None = None,
            identity: float = 0.0) -> dict:
    """Teacher trajectories (cached in ``out`` in chunks of ``chunk``, so a larger run reuses a
    smaller one's and a coarser student a finer one's), then the student; attaches it to
    ``model``. A student already in the model is trained on (a first round's student, or one
    with twice the steps: progressive), with a fresh schedule per step and trajectory count.
    ``on_policy``: ``trajectories`` pairs on the current student's own path instead
    (``onpolicy_pairs``; needs a first round's student). ``student_guidance``: the targets are
    the current student's own steps with that much classifier-free guidance on top
    (``teacher_trajectories``). ``identity``: the identity term's weight (``train_student``)."""
    from models.export import model_hash

    if on_policy and student_guidance is not None:
        raise ValueError("on-policy pairs and guidance folding are two kinds of round: run one at a time")
    dev = device or model.device
    # rounds whose targets depend on the student they start from (cached under its hash)
    kind = "onpolicy" if on_policy else f"student-cfg{student_guidance:g}" if student_guidance is not None else None
    t0 = time.time()
    parts = []
    for k in range(0, trajectories, chunk):
        n, part_seed = min(chunk, trajectories - k), seed + k // chunk
        if kind is not None:
            path = out / f"distill-{kind}-{steps}x{teacher_steps}-{model_hash(model)[:12]}-n{n}-s{part_seed}.pt"
            cached = Trajectories(**torch.load(path, weights_only=True)) if path.is_file() else None
        else:
            path = out / f"distill-trajectories-{steps}x{teacher_steps}-n{n}-s{part_seed}.pt"
            cached = _cached(out, model, steps, teacher_steps, n, part_seed)
        if cached is None:
            cached = onpolicy_pairs(model, ts, n, steps, teacher_steps, guidance, part_seed) if on_policy else \
                teacher_trajectories(model, ts, n, steps, teacher_steps, guidance, part_seed,
                                     student_guidance=student_guidance)
            torch.save(cached.__dict__, path)
        parts.append(cached)
    traj = Trajectories(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("xs", "base", "inten", "cont", "context", "has_context")), parts[0].grid,
                        torch.cat([p.ts for p in parts]) if on_policy else None)
    t_traj = time.time() - t0
    student = model.student if model.student is not None else copy.deepcopy(model.dit)
    model.add_student(student, steps, guidance)  # a submodule now: resumable with the model state
    student.train().requires_grad_(True)
    stage = f"distill-{steps}steps-{kind + '-' if kind else ''}n{trajectories}{f'-id{identity:g}' if identity > 0 else ''}"
    tr = Trainer(model, out, stage, train_steps, lr, list(student.parameters()),
                 dev, seed, ema=ema)
    report = train_student(model, traj, tr, student, batch, identity)
    student.eval().requires_grad_(False)
    targets = "on-policy pairs (the student's own states)" if on_policy else "teacher trajectories"
    teacher = f"dpmpp2m {teacher_steps} steps, guidance {guidance}"
    if student_guidance is not None:
        targets = f"the previous student's own {steps} steps with guidance {student_guidance:g} on top"
        teacher = f"the previous student (from {teacher}), guidance {student_guidance:g}"
    return {**report, "student_steps": steps, "teacher": teacher, "trajectories": trajectories,
            "trajectory_s": round(t_traj, 1), "lr": lr, "ema": ema, "targets": targets}
