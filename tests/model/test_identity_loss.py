"""The denoiser's identity term (``twin-engine train diffusion --identity-weight``)."""

import json
import shutil

import numpy as np
import torch

from models.conditions import encode_states
from models.training.trainer import (
    identity_distance,
    load_training_set,
    reading_conditions,
    record_latents_and_bases,
)
from models.twin import TwinModel


def _fine_tuned(src, dst, data_dir, identity: float):
    from models.training.stages import run_stage

    shutil.copytree(src, dst)
    (dst / "diffusion.state.pt").unlink()  # a fresh fine-tune from the same weights, not a resume
    return run_stage("diffusion", dst, data_dir / "ptbxl-subset", size="tiny", steps=60, batch=8, limit=48,
                     lr=1e-3, identity=identity)


def _reading_distance(model: TwinModel, ts) -> float:
    """Mean cosine distance between each record's base vector and the extractor's reading of the
    denoiser's clean prediction from a half-noised window of that record (fixed noise)."""
    z, bases = record_latents_and_bases(model, ts, torch.device("cpu"))
    z0 = z[..., : model.tokens]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.full((len(z0),), 300)
    inten, cont = (torch.from_numpy(a) for a in encode_states(list(ts.states)))
    read_i, read_c = reading_conditions(ts, torch.device("cpu"))
    with torch.no_grad():
        z_t = model.schedule.add_noise(z0, noise, t)
        v = model.dit(z_t, t, bases, model.dit.condition_tokens(inten, cont))
        return float(identity_distance(model, model.schedule.x0_from_v(z_t, v, t), read_i, read_c, bases).mean())


def test_identity_term_brings_the_prediction_closer_to_the_person(tmp_path, tiny_model_dir, tiny_model, data_dir):
    """Two fine-tunes from the same weights and seed, with and without the term: the one with it
    predicts clean latents the frozen extractor reads nearer each record's base vector; the
    extractor (and so the encoder id that stored base vectors are checked against) is untouched."""
    plain = _fine_tuned(tiny_model_dir, tmp_path / "plain", data_dir, 0.0)
    with_id = _fine_tuned(tiny_model_dir, tmp_path / "identity", data_dir, 20.0)
    assert plain.encoder_id == with_id.encoder_id == tiny_model.encoder_id
    info = json.loads((tmp_path / "identity" / "training.json").read_text())["diffusion"]
    assert info["identity"] == 20.0 and 0.0 <= info["final_identity_distance"] <= 2.0 and info["final_v_loss"] > 0
    assert "identity" not in json.loads((tmp_path / "plain" / "training.json").read_text())["diffusion"]
    ts = load_training_set(data_dir / "ptbxl-subset", limit=48)
    d_plain, d_id = _reading_distance(plain, ts), _reading_distance(with_id, ts)
    assert np.isfinite(d_plain) and d_id < 0.9 * d_plain  # measured 0.156 against 0.215


def _student_round(src, dst, data_dir, identity: float):
    from models.training.stages import run_stage

    shutil.copytree(src, dst)  # with the teacher's trajectories: the same targets for both
    return run_stage("distill", dst, data_dir / "ptbxl-subset", size="tiny", steps=60, batch=16, limit=48,
                     lr=1e-3, distill_options={"trajectories": 64, "teacher_steps": 16, "identity": identity})


def test_a_distillation_round_with_the_identity_term_keeps_the_student_nearer_the_person(
        tmp_path, distilled_model_dir, data_dir):
    """``train distill --identity-weight``: the same round on the same trajectories with and
    without the term; with it, the student's clean predictions along the teacher's paths read
    nearer each row's base vector, and the term is recorded."""
    from models.training.distill import Trajectories

    plain = _student_round(distilled_model_dir, tmp_path / "plain", data_dir, 0.0)
    with_id = _student_round(distilled_model_dir, tmp_path / "identity", data_dir, 5.0)
    info = json.loads((tmp_path / "identity" / "training.json").read_text())["distill"]
    assert info["identity"] == 5.0 and 0.0 <= info["final_identity_distance"] <= 2.0
    assert "identity" not in json.loads((tmp_path / "plain" / "training.json").read_text())["distill"]
    [cache] = (tmp_path / "plain").glob("distill-trajectories-*.pt")
    traj = Trajectories(**torch.load(cache, weights_only=False))
    x, t = traj.xs[:, 1], torch.full((len(traj.xs),), traj.grid[1])
    inten, cont = torch.zeros_like(traj.inten), torch.zeros_like(traj.cont)
    cont[:, 0] = traj.cont[:, 0]

    def distance(m: TwinModel) -> float:
        with torch.no_grad():
            cond = m.dit.condition_tokens(traj.inten, traj.cont)
            x0 = m.schedule.x0_from_v(x, m.student(x, t, traj.base, cond), t)
            return float(identity_distance(m, x0, inten, cont, traj.base).mean())

    d_plain, d_id = distance(plain), distance(with_id)
    assert np.isfinite(d_plain) and d_id < 0.9 * d_plain, (d_id, d_plain)  # printed on failure
