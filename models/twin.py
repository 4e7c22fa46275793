"""The twin model as the service sees it: ``encode`` references to a base vector, ``generate``
ECG for base vectors under target states, ``edit`` one finding of a generated ECG.

Everything is batched over patients; one call is one batch on the accelerator.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import checkpoint
from models.conditions import VOCAB, CardiacState, encode_states, normal_counterpart
from models.nets.autoencoder import AEConfig, ECGAutoencoder
from models.nets.base_extractor import BaseExtractor, IBEConfig
from models.nets.dit import AdaXDiT, DiTConfig
from models.rpeaks import label_heart_rate
from models.sampling.samplers import NoiseSchedule, get_sampler


def to_device(x: np.ndarray | Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """``x`` (one float32 array, or rows of equal shape to stack) as a tensor on ``device``. To a
    GPU it goes through page-locked memory, which the caching host allocator recycles: pageable
    copies ran at 1.5 GB/s on the H200 machine, page-locked ones at 55 (docs/BENCHMARKS.md)."""
    rows = not isinstance(x, np.ndarray)
    if device.type != "cuda":
        return torch.from_numpy(np.stack(x) if rows else np.ascontiguousarray(x, np.float32)).to(device)
    shape = (len(x), *x[0].shape) if rows else x.shape
    buf = torch.empty(shape, dtype=torch.float32, pin_memory=True)
    if rows:
        np.stack(x, out=buf.numpy())
    else:
        buf.numpy()[...] = x
    return buf.to(device, non_blocking=True)

PRESETS: dict[str, dict] = {
    "tiny": {
        "ae": AEConfig(enc_channels=(16, 16, 16), dec_channels=(16, 16, 16)),
        "ibe": IBEConfig(dim=32, depth=1, heads=2, base_dim=32),
        "dit": DiTConfig(dim=32, depth=1, heads=2, base_dim=32, tokens=32),
        "window": 256,
    },
    "small": {
        "ae": AEConfig(),
        "ibe": IBEConfig(),
        "dit": DiTConfig(),
        "window": 1024,
    },
}


DENOISERS = ("auto", "teacher", "student")


@dataclass(frozen=True)
class SamplingPlan:
    """How windows are sampled: which denoiser, which sampler, how many steps. The denoiser is a
    choice of its own (as k-diffusion wraps a model before any sampler sees it): the AdaX DiT
    "teacher" with classifier-free guidance, or the distilled "student", which has the guidance
    folded in and was distilled for DDIM at ``meta.student_steps`` steps."""

    denoiser: str
    sampler: str
    steps: int

    @property
    def name(self) -> str:
        """What reports, benchmarks and configuration call it ("distilled": the student's plan)."""
        return "distilled" if self.denoiser == "student" else self.sampler


@dataclass
class ModelMeta:
    fs: int = 250
    window: int = 1024  # samples per generated window (latent tokens x 8)
    leads: tuple[str, ...] = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
    vocab: tuple[str, ...] = VOCAB
    version: str = "untrained"
    # a distilled student denoiser (models/training/distill.py), if the checkpoint has one: the step
    # count it was trained for and the guidance scale folded into it
    student_steps: int = 0
    student_guidance: float = 1.0
    # contrastive guidance per morphology statement (``contrast_for``), chosen for these weights by
    # ``python -m models.evaluation.conditioning --choose-contrast``; none: the plain conditional model
    contrast: dict = field(default_factory=dict)

    def guides(self, state: CardiacState, default: bool) -> bool:
        """Whether ``state`` is drawn with contrastive guidance: as it says, else ``default``;
        never where no statement of it has a weight."""
        return state.with_contrast(default) and self.contrast_for(state) > 0

    def contrast_for(self, state: CardiacState) -> float:
        """The contrastive guidance weight for ``state``: the least of its statements' weights,
        shared among them (divided by their summed intensity, at least 1), 0 where it states
        none with a weight (a normal ECG, a rhythm). The push from normal adds up over the
        statements: ASMI + IMI 0.5 + 1AVB at 1AVB's own 2 drew P waves as tall as the QRS, and
        XQRS counted them."""
        w = {c: v for c, v in state.statements.items() if v > 0 and c in self.contrast}
        return float(min(self.contrast[c] for c in w) / max(1.0, sum(w.values()))) if w else 0.0


class AttentionRecorder:
    """Records (mode 'record') or replays (mode 'replay') attention maps, step by step.

    Editing re-runs sampling with the source's maps for the early steps, so the edited ECG keeps
    the source's beat timing and morphology; the edited statement's column of the
    cross-attention stays free, so the change shows where that finding lives."""

    def __init__(self, free_slots: Sequence[int] = ()) -> None:
        self.maps: list[dict[tuple[str, int], torch.Tensor]] = []
        self.mode, self.step, self.free = "record", 0, list(free_slots)

    def begin_step(self, step: int) -> None:
        self.step = step
        if self.mode == "record":
            self.maps.append({})

    def __call__(self, kind: str, layer: int, probs: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.maps[self.step][(kind, layer)] = probs
            return probs
        src = self.maps[self.step][(kind, layer)] if self.step < len(self.maps) else None
        if src is None:
            return probs
        if kind == "cross" and self.free:
            out = src.clone()
            out[..., self.free] = probs[..., self.free]
            return out / out.sum(-1, keepdim=True)
        return src


class TwinModel(torch.nn.Module):
    def __init__(self, ae: AEConfig, ibe: IBEConfig, dit: DiTConfig, meta: ModelMeta) -> None:
        super().__init__()
        self.ae, self.ibe, self.dit = ECGAutoencoder(ae), BaseExtractor(ibe), AdaXDiT(dit)
        self.meta = meta
        self.schedule = NoiseSchedule()
        self.student: AdaXDiT | None = AdaXDiT(dit) if meta.student_steps else None
        # The networks that run per generation, swappable by an inference backend
        # (twin_engine.backends.runtime): denoiser(z, t, base, cond_tokens) -> v, decoder(z) -> signal,
        # and the distilled student (same signature as the denoiser) where there is one.
        self.set_backend("torch", self.dit, self.ae.decode, self.student)

    def set_backend(self, name: str, denoiser, decoder, student=None) -> None:
        # plain attributes, not submodules: a backend's graphs are not part of the weights
        object.__setattr__(self, "denoiser", denoiser)
        object.__setattr__(self, "decoder", decoder)
        object.__setattr__(self, "student_denoiser", student)
        object.__setattr__(self, "backend", name)

    def add_student(self, student: AdaXDiT, steps: int, guidance: float) -> None:
        """Attach a distilled denoiser: ``sampler="distilled"`` then runs it for ``steps`` DDIM
        steps without classifier-free guidance (``guidance`` is already in its weights)."""
        self.student = student
        self.meta.student_steps, self.meta.student_guidance = int(steps), float(guidance)
        self.set_backend(self.backend, self.denoiser, self.decoder, student)

    def plan(self, sampler: str, steps: int, denoiser: str = "auto") -> SamplingPlan:
        """The sampling plan for a configured sampler and denoiser.

        Args:
            sampler: a sampler name, "auto", or "distilled" (the configuration's name for the
                student with DDIM).
            denoiser: "teacher", "student", or "auto": the student where the model has one for
                ``steps`` steps and the sampler is "auto" (half the forward passes: guidance is
                folded in), else the teacher.
        Raises:
            ValueError: a student asked for that the model does not have, or for other steps
                or another sampler than it was distilled for.
        """
        if denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {', '.join(DENOISERS)}, not {denoiser!r}")
        if sampler == "distilled":
            sampler, denoiser = "ddim", "student"
        if denoiser == "auto":
            fits = self.student is not None and steps == self.meta.student_steps
            denoiser = "student" if sampler == "auto" and fits else "teacher"
        if sampler == "auto":
            sampler = "ddim" if denoiser == "student" else "dpmpp2m"
        if denoiser == "student":
            if self.student_denoiser is None:
                raise ValueError("the distilled student needs a model that has one (twin-engine train distill)")
            if steps != self.meta.student_steps or sampler != "ddim":
                raise ValueError(f"the distilled student was trained for {self.meta.student_steps} steps of DDIM, "
                                 f"not {steps} of {sampler}")
        return SamplingPlan(denoiser, sampler, steps)

    def resolve_sampler(self, name: str, steps: int) -> str:
        """What a configured sampler name runs as: ``auto`` resolved (``plan``), any other name as
        given (checked when it is sampled, so benchmarks can list and skip combinations)."""
        return name if name != "auto" else self.plan(name, steps).name

    def _modules_to_save(self) -> dict[str, torch.nn.Module]:
        mods = {"ae": self.ae, "ibe": self.ibe, "dit": self.dit}
        return {**mods, "student": self.student} if self.student is not None else mods

    # ---- construction and files -------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **dit_overrides) -> TwinModel:
        p = PRESETS[name]
        dit = DiTConfig(**{**p["dit"].to_dict(), "tokens": p["window"] // 8, **dit_overrides})
        return cls(p["ae"], p["ibe"], dit, ModelMeta(window=p["window"]))

    def config(self) -> dict:
        return {"ae": self.ae.cfg.to_dict(), "ibe": self.ibe.cfg.to_dict(), "dit": self.dit.cfg.to_dict(),
                "meta": {**self.meta.__dict__}}

    def save(self, folder: str | Path, extra: dict | None = None, half: bool = False) -> Path:
        return checkpoint.save(folder, self._modules_to_save(), {**self.config(), **(extra or {})}, half=half)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TwinModel:
        cfg = checkpoint.read_config(folder)
        try:
            ae = AEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["ae"].items()})
            ibe, dit = IBEConfig(**cfg["ibe"]), DiTConfig(**cfg["dit"])
            meta = ModelMeta(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["meta"].items()})
        except (KeyError, TypeError) as exc:
            raise checkpoint.CheckpointError(f"model config in {folder} is not understood: {exc}") from exc
        model = cls(ae, ibe, dit, meta)
        checkpoint.load_into(folder, model._modules_to_save())
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @functools.cached_property
    def encoder_id(self) -> str:
        """Names the space base vectors live in: a hash of the networks that make them (the
        autoencoder and the base extractor). A stored base vector means the same patient only
        to a model with the same id; retraining the diffusion model or distilling a student keeps
        it, retraining the extractor does not."""
        h = hashlib.sha256()
        for prefix, module in (("ae", self.ae), ("ibe", self.ibe)):
            for name, t in sorted(module.state_dict().items()):
                h.update(f"{prefix}.{name}".encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def tokens(self) -> int:
        return self.meta.window // ECGAutoencoder.compression

    def reading_starts(self, n: int) -> range:
        """Where the extractor reads a latent of ``n`` tokens: windows of ``tokens``, half
        overlapping (references at serving and records in training are read alike)."""
        return range(0, n - self.tokens + 1, max(1, self.tokens // 2))

    # ---- conditions -------------------------------------------------------------------
    def condition_tensors(self, states: Sequence[CardiacState]) -> tuple[torch.Tensor, torch.Tensor]:
        """The AdaX injector's inputs for ``states`` (validated against the vocabulary).

        Returns:
            (intensities, continuous conditions), on the model's device.
        """
        for s in states:
            s.validate(self.meta.vocab)
        inten, cont = encode_states(list(states), self.meta.vocab)
        return to_device(inten, self.device), to_device(cont, self.device)

    # ---- base vectors -----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, reference_ecgs: Sequence[np.ndarray],
               states: Sequence[CardiacState] | None = None) -> np.ndarray:
        """One base vector from one or more (samples, leads) reference ECGs at ``meta.fs``.

        Each reference is encoded whole and read in overlapping windows; all windows of all
        references are averaged on the sphere (and erased of rhythm and rate where the extractor
        has an erasure: ``BaseExtractor.pool``). Without stated conditions the reference's own
        heart rate is measured and no statement is assumed."""
        bases = []
        for i, ecg in enumerate(reference_ecgs):
            ecg = np.asarray(ecg, np.float32)
            if ecg.ndim != 2 or ecg.shape[1] != len(self.meta.leads):
                raise ValueError(f"reference {i}: expected (samples, {len(self.meta.leads)}), got {ecg.shape}")
            n = ecg.shape[0] // 8 * 8
            if n < self.meta.window:
                raise ValueError(f"reference {i}: {ecg.shape[0]} samples, need >= {self.meta.window}")
            state = states[i] if states else CardiacState({}, label_heart_rate(ecg, self.meta.fs))
            z = self.ae.encode(torch.from_numpy(ecg[:n].T.copy())[None].to(self.device))
            windows = torch.cat([z[..., s:s + self.tokens] for s in self.reading_starts(z.shape[-1])])
            inten, cont = self.condition_tensors([state] * len(windows))
            bases.append(self.ibe(windows, inten, cont))
        return self.ibe.pool(torch.cat(bases)).cpu().numpy()

    # ---- generation -------------------------------------------------------------------
    def x0_predictor(self, base, inten, cont, guidance, context, controller=None, net=None,
                     contrast: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """The denoiser as a clean-sample prediction ``x0(x, t)`` (classifier-free guided when
        ``guidance`` != 1, the ``context`` latents held fixed), the form every sampler in
        ``models.sampling.samplers`` takes, as k-diffusion wraps its models.

        Args:
            net: the network (default: the denoiser, or the DiT when ``controller`` edits attention).
            contrast: (intensities, continuous, weights (B, 1, 1)) of reference states: guidance
                away from them as well, ``v + weight * (v_c - v_ref)``.
        """
        if net is None:
            net = self.denoiser if controller is None else self.dit  # editing needs attention maps
        parts = [self.dit.condition_tokens(inten, cont)]
        if guidance != 1.0:
            parts.append(self.dit.condition_tokens(inten, cont, torch.ones(len(inten), dtype=torch.bool,
                                                                            device=inten.device)))
        if contrast is not None:
            parts.append(self.dit.condition_tokens(contrast[0], contrast[1]))
        n = len(parts)
        cond, base2 = torch.cat(parts), torch.cat([base] * n)

        def x0_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if controller is not None:
                controller.begin_step(x0_fn.step)
                x0_fn.step += 1
            xs, ts = (x, t) if n == 1 else (torch.cat([x] * n), torch.cat([t] * n))
            v = net(xs, ts, base2, cond) if controller is None else net(xs, ts, base2, cond, controller)
            vs = v.chunk(n)
            v = vs[0]
            if guidance != 1.0:
                v = vs[1] + guidance * (vs[0] - vs[1])
            if contrast is not None:
                v = v + contrast[2] * (vs[0] - vs[-1])
            x0 = self.schedule.x0_from_v(x, v, t)
            if context is not None:  # in-painting: the known start of the window is the context
                x0 = torch.cat([context, x0[..., context.shape[-1]:]], dim=-1)
            return x0

        x0_fn.step = 0
        return x0_fn

    @torch.no_grad()
    def generate_latent(self, base_vectors: np.ndarray | torch.Tensor, states: Sequence[CardiacState],
                        steps: int = 4, seed: int | Sequence[int] = 0, sampler: str = "dpmpp2m",
                        guidance: float = 1.5, context: torch.Tensor | None = None,
                        controller: AttentionRecorder | None = None, denoiser: str = "auto",
                        contrast: float | None = 0.0) -> torch.Tensor:
        """(B, C, tokens) latents; ``context`` (B, C, k) fixes the first k tokens (continuation).

        ``sampler`` and ``denoiser`` make the plan (``plan``): the distilled student runs one
        forward pass per step with guidance folded in (``guidance`` is ignored for it).
        ``contrast`` also guides each row away from its state's normal counterpart
        (``normal_counterpart``), for the student too, at one more forward pass per step where
        any row has a weight: a weight for all rows (0: off, the default), or None for each
        state's own (``meta.contrast_for``)."""
        base = to_device(np.asarray(base_vectors, np.float32), self.device)
        inten, cont = self.condition_tensors(states)
        weights = [self.meta.contrast_for(s) if contrast is None else float(contrast) for s in states]
        ref = None
        if any(weights):
            w = torch.tensor(weights, dtype=torch.float32, device=inten.device)[:, None, None]
            ref = (*self.condition_tensors([normal_counterpart(s) for s in states]), w)
        b = len(states)
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        g = torch.Generator()  # one generator re-seeded per row: the same noise, less per-row cost
        noise = to_device([torch.randn(self.dit.cfg.latent_channels, self.tokens, generator=g.manual_seed(int(s))).numpy()
                           for s in seeds], self.device)
        gen = torch.Generator().manual_seed(int(seeds[0]))
        plan = self.plan(sampler, steps, denoiser)
        if plan.denoiser == "student":
            fn = self.x0_predictor(base, inten, cont, 1.0, context, net=self.student_denoiser, contrast=ref)
        else:
            fn = self.x0_predictor(base, inten, cont, guidance, context, controller, contrast=ref)
        return get_sampler(plan.sampler, self.schedule).sample(fn, noise, steps, gen)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """(B, C, tokens) -> (B, samples, leads) float32 in the training units."""
        return self.decoder(z).transpose(1, 2).float().cpu().numpy()

    def generate(self, base_vectors, states, steps: int = 4, seed=0, sampler: str = "dpmpp2m",
                 guidance: float = 1.5, contrast: float | None = 0.0) -> np.ndarray:
        """(B, window, leads) ECG for each base vector under each state (``contrast``: see
        ``generate_latent``)."""
        return self.decode(self.generate_latent(base_vectors, states, steps, seed, sampler, guidance,
                                                contrast=contrast))

    @torch.no_grad()
    def edit(self, base_vector: np.ndarray, source: CardiacState, target: CardiacState,
             steps: int = 8, seed: int = 0, sampler: str = "ddim", guidance: float = 1.5,
             replay_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(source ECG, edited ECG): same noise, source's attention maps replayed for the first
        ``replay_fraction`` of the steps, the changed statements' attention left free."""
        changed = [i for i, c in enumerate(self.meta.vocab)
                   if source.statements.get(c, 0.0) != target.statements.get(c, 0.0)]
        rec = AttentionRecorder(changed)
        base = np.asarray(base_vector, np.float32)[None]
        z_src = self.generate_latent(base, [source], steps, seed, sampler, guidance, controller=rec)
        rec.maps = rec.maps[: max(1, round(replay_fraction * steps))]
        rec.mode = "replay"
        z_edit = self.generate_latent(base, [target], steps, seed, sampler, guidance, controller=rec)
        return self.decode(z_src)[0], self.decode(z_edit)[0]

