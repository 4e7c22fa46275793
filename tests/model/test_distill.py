"""The distilled few-step student: it follows the teacher's trajectories, ships inside the model
folder, and is what ``sampler="auto"`` picks at its own step count."""

import numpy as np
import pytest
import torch

from models.conditions import CardiacState
from models.sampling.samplers import get_sampler
from models.training.distill import Trajectories
from models.twin import TwinModel


def _final_error(model: TwinModel, traj: Trajectories, net, guidance: float) -> float:
    """Mean squared distance of a 4-step DDIM run from the teacher's own end points."""
    keep = ~traj.has_context
    x_T, target = traj.xs[keep, 0], traj.xs[keep, -1]
    fn = model.x0_predictor(traj.base[keep], traj.inten[keep], traj.cont[keep], guidance, None, net=net)
    with torch.no_grad():
        out = get_sampler("ddim", model.schedule).sample(fn, x_T, 4)
    return float(((out - target) ** 2).mean())


def test_student_follows_the_teacher_better_than_the_teacher_in_few_steps(distilled_model_dir):
    model = TwinModel.load(distilled_model_dir)
    [cache] = distilled_model_dir.glob("distill-trajectories-*.pt")
    traj = Trajectories(**torch.load(cache, weights_only=False))
    teacher_4 = _final_error(model, traj, model.dit, 1.5)  # the teacher itself, 4 DDIM steps, guided
    student_4 = _final_error(model, traj, model.student, 1.0)  # one forward per step, guidance folded
    assert student_4 < 0.7 * teacher_4, (student_4, teacher_4)


def test_student_ships_in_the_model_folder(distilled_model_dir, tmp_path):
    model = TwinModel.load(distilled_model_dir)
    assert model.student is not None and model.meta.student_steps == 4
    assert model.resolve_sampler("auto", 4) == "distilled"
    assert model.resolve_sampler("auto", 8) == "dpmpp2m"
    base = np.ones((2, model.ibe.cfg.base_dim), np.float32) / np.sqrt(model.ibe.cfg.base_dim)
    states = [CardiacState(), CardiacState({"AFIB": 1.0}, 120)]
    a = model.generate(base, states, steps=4, seed=1, sampler="distilled")
    assert np.isfinite(a).all() and not np.allclose(a[0], a[1])
    with pytest.raises(ValueError, match="trained for 4 steps"):
        model.generate(base, states, steps=2, seed=1, sampler="distilled")
    # the student is a denoiser choice: with DDIM at its steps it is the "distilled" plan
    assert model.plan("ddim", 4, "student").name == "distilled" and model.plan("ddim", 4).denoiser == "teacher"
    assert model.plan("auto", 4, "teacher") == type(model.plan("auto", 4))("teacher", "dpmpp2m", 4)
    np.testing.assert_allclose(model.generate_latent(base, states, 4, 1, "ddim", denoiser="student"),
                               model.generate_latent(base, states, 4, 1, "distilled"), atol=1e-6)
    with pytest.raises(ValueError, match="trained for 4 steps of DDIM"):
        model.plan("dpmpp2m", 4, "student")
    model.save(tmp_path / "copy")
    again = TwinModel.load(tmp_path / "copy").generate(base, states, steps=4, seed=1, sampler="auto")
    np.testing.assert_allclose(a, again, atol=1e-5)


def test_model_without_student_refuses_distilled(tiny_model):
    assert tiny_model.resolve_sampler("auto", 4) == "dpmpp2m"
    with pytest.raises(ValueError, match="distilled student"):
        tiny_model.generate(np.zeros((1, tiny_model.ibe.cfg.base_dim), np.float32), [CardiacState()],
                            steps=4, sampler="distilled")


def test_coarser_student_reuses_nested_trajectories(distilled_model_dir):
    """A 2-step student's targets are the 4-step teacher runs at their shared timesteps."""
    from models.training.distill import coarsen, student_grid

    model = TwinModel.load(distilled_model_dir)
    [cache] = distilled_model_dir.glob("distill-trajectories-4x*.pt")
    traj = Trajectories(**torch.load(cache, weights_only=False))
    two = coarsen(traj, student_grid(model, 2))
    assert two.grid == [traj.grid[0], traj.grid[2], -1]
    torch.testing.assert_close(two.xs[:, 1], traj.xs[:, 2])
    torch.testing.assert_close(two.xs[:, -1], traj.xs[:, -1])
    with pytest.raises(ValueError, match="not nested"):
        coarsen(traj, student_grid(model, 3))


def test_trainer_leaves_the_moving_average_in_the_weights(tmp_path):
    """With ``ema`` the final weights are the average of the path, not the last step."""
    from models.training.stages import Trainer

    net = torch.nn.Linear(3, 1, bias=False)
    path = []

    def loss(rng):
        x = torch.from_numpy(rng.standard_normal((8, 3)).astype(np.float32))
        return ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()

    tr = Trainer(net, tmp_path, "toy", 40, 0.05, net.parameters(), torch.device("cpu"), 0, ema=0.9)
    orig_step = tr.opt.step

    def step_and_record(*a, **k):
        out = orig_step(*a, **k)
        path.append(net.weight.detach().clone())
        return out

    tr.opt.step = step_and_record
    expected = net.weight.detach().clone()
    tr.run(loss)
    for step, w in enumerate(path, start=1):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * w
    torch.testing.assert_close(net.weight.detach(), expected)
    assert not torch.allclose(net.weight.detach(), path[-1])


def test_onpolicy_pairs_start_on_the_students_path_and_end_on_the_teachers(distilled_model_dir, data_dir):
    """Each pair's start is where the student's own steps from its noise lead (interval i: after
    i student steps), and its end is the guided teacher's walk from there to the next timestep."""
    from models.training.distill import onpolicy_pairs, student_grid, teacher_walk
    from models.training.stages import load_training_set

    model = TwinModel.load(distilled_model_dir)
    ts = load_training_set(data_dir / "ptbxl-subset", fs=model.meta.fs, limit=48)
    pairs = onpolicy_pairs(model, ts, 24, 4, 16, 1.5, seed=3, batch=12)
    grid = student_grid(model, 4)
    assert pairs.xs.shape[:2] == (24, 2) and pairs.ts.shape == (24, 2)
    starts = pairs.ts[:, 0].tolist()
    assert {(a, b) for a, b in pairs.ts.tolist()} <= {(grid[i], grid[i + 1]) for i in range(4)}
    assert len(set(starts)) > 1  # several intervals drawn
    plain = (~pairs.has_context).nonzero().squeeze(1)
    for k in plain[:4].tolist():
        t_a, t_b = pairs.ts[k].tolist()
        one = slice(k, k + 1)
        fn = model.x0_predictor(pairs.base[one], pairs.inten[one], pairs.cont[one], 1.5, None)
        with torch.no_grad():
            end = get_sampler("dpmpp2m", model.schedule).sample(fn, pairs.xs[one, 0], teacher_walk(t_a, t_b, 4))
        torch.testing.assert_close(end, pairs.xs[one, 1], atol=1e-4, rtol=1e-4)


def test_onpolicy_round_continues_the_student_on_its_own_pairs(distilled_model_dir, data_dir, tmp_path):
    """``train distill --on-policy``: a further round on pairs from the shipped student's own path,
    cached under that student's hash, recorded as such, the first round kept."""
    import json
    import shutil

    from models.training.stages import run_stage

    out = tmp_path / "model"
    shutil.copytree(distilled_model_dir, out)
    before = {k: v.clone() for k, v in TwinModel.load(out).student.state_dict().items()}
    run_stage("distill", out, data_dir / "ptbxl-subset", size="tiny", steps=20, batch=8, limit=48,
              distill_options={"trajectories": 16, "teacher_steps": 8, "on_policy": True})
    info = json.loads((out / "training.json").read_text())
    assert info["distill"]["targets"].startswith("on-policy") and info["distill_earlier_rounds"]
    assert len(list(out.glob("distill-onpolicy-4x8-*-n16-s0.pt"))) == 1
    after = TwinModel.load(out).student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_guidance_folding_round_fits_the_guided_students_own_steps(distilled_model_dir, data_dir, tmp_path):
    """``train distill --student-guidance W``: the targets are the current student's own DDIM
    steps with guidance W on top (not what it does alone), cached under that student's hash,
    and the round trains the student on them, recorded as such."""
    import json
    import shutil

    from models.training.distill import student_grid
    from models.training.stages import run_stage

    out = tmp_path / "model"
    shutil.copytree(distilled_model_dir, out)
    model = TwinModel.load(out)
    run_stage("distill", out, data_dir / "ptbxl-subset", size="tiny", steps=20, batch=8, limit=48,
              distill_options={"trajectories": 16, "teacher_steps": 8, "student_guidance": 1.3})
    [cache] = out.glob("distill-student-cfg1.3-4x8-*-n16-s0.pt")
    traj = Trajectories(**torch.load(cache, weights_only=False))
    grid = student_grid(model, 4)
    assert traj.grid == grid and traj.xs.shape[1] == 5
    one = slice(int((~traj.has_context).nonzero()[0]), None)
    one = slice(one.start, one.start + 1)
    ddim = get_sampler("ddim", model.schedule)
    for i in range(4):
        step = [grid[i], grid[i + 1]]
        with torch.no_grad():
            guided = ddim.sample(model.x0_predictor(traj.base[one], traj.inten[one], traj.cont[one], 1.3, None,
                                              net=model.student), traj.xs[one, i], step)
            alone = ddim.sample(model.x0_predictor(traj.base[one], traj.inten[one], traj.cont[one], 1.0, None,
                                             net=model.student), traj.xs[one, i], step)
        torch.testing.assert_close(guided, traj.xs[one, i + 1], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(alone, traj.xs[one, i + 1], atol=1e-3)
    info = json.loads((out / "training.json").read_text())
    assert "guidance 1.3 on top" in info["distill"]["targets"] and info["distill_earlier_rounds"]
    after = TwinModel.load(out).student.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in model.student.state_dict().items())
