"""The training scaffold: resume, schedules, atomic checkpoints, seeding (a toy trainer, then the real ones)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_fusion.training import scaffold


class ToyTrainer:
    """A linear model with SGD + momentum on a cosine schedule over ``total`` steps; it is its own runner."""

    def __init__(self, lr: float = 0.1, total: int = 6):
        self.net = torch.nn.Linear(4, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9)
        self.total = total
        self.step = 0
        self.time_fraction = lambda: 0.0
        self.sched = scaffold.lr_schedule(self.opt, self.factor)
        self.last_lr = None
        self.lrs: list[float] = []

    def factor(self, step: int) -> float:
        return scaffold.cosine(max(step / self.total, self.time_fraction()))

    def train_step(self, x, y) -> dict[str, float]:
        loss = ((self.net(x) - y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.last_lr = self.sched.get_last_lr()[0]
        self.lrs.append(self.last_lr)
        self.step += 1
        self.sched.step()
        return {"loss": float(loss.detach())}

    def state_dict(self):
        return {"step": self.step, "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.step = int(state["step"])
        self.opt.load_state_dict(state["opt"])
        self.sched = scaffold.lr_schedule(self.opt, self.factor, self.step, self.sched.base_lrs)

    def finish(self):
        return self

    def to_bundle(self):
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}, {"family": "Toy"}


class ToySampler:
    """Batches from a seeded NumPy generator plus torch noise (both random states must survive a resume)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def batch(self):
        x = torch.from_numpy(self.rng.normal(size=(8, 4)).astype(np.float32))
        return x, x.sum(1, keepdim=True) + 0.1 * torch.randn(8, 1)


def toy_run(out, steps: int, *, seed: int = 0, resume=None, lr: float = 0.1, budget: float = 0.0, **kw):
    args = argparse.Namespace(out=str(out), steps=steps, time_budget=budget, resume=str(resume) if resume else None, log=None,
                              log_every=1, ckpt_every=2, seed=seed, threads=0, device="cpu", command=f"toy --steps {steps}", **kw)
    lines: list[str] = []
    with scaffold.torch_run(args):
        trainer = ToyTrainer(lr)
        if resume:
            trainer.net.load_state_dict(load_file(str(resume)))
        sampler = ToySampler(seed)
        run = scaffold.Run(args, lines.append)
        run.start(trainer, sampler)
        run.train(trainer, trainer, sampler, lambda: trainer.train_step(*sampler.batch()))
        record = run.end(trainer, trainer, sampler)
    return trainer, record, [json.loads(s) for s in lines]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------ schedule
def test_cosine_numbers():
    assert scaffold.cosine(0.0) == 1.0 and scaffold.cosine(1.0) == pytest.approx(0.05)
    assert scaffold.cosine(0.5) == pytest.approx(0.525) and scaffold.cosine(2.0) == scaffold.cosine(1.0)
    assert scaffold.cosine(-1.0) == 1.0


def test_schedule_placed_at_a_step_gives_that_steps_rate_at_this_runs_base_rate():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    s = scaffold.lr_schedule(opt, lambda k: 0.5**k, step=3)
    assert s.last_epoch == 3 and opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.125)
    # an optimiser state saved at another rate does not change the base rate handed on
    opt.param_groups[0]["lr"] = 7.0
    opt.param_groups[0]["initial_lr"] = 9.0
    s2 = scaffold.lr_schedule(opt, lambda k: 0.5**k, step=4, base_lrs=s.base_lrs)
    assert s2.base_lrs == [0.2] and opt.param_groups[0]["lr"] == pytest.approx(0.2 / 16)


# ------------------------------------------------------------------------------------------ resume
def test_resume_continues_the_step_count_the_schedule_and_the_random_states(tmp_path):
    straight, rec_a, _ = toy_run(tmp_path / "a.safetensors", 6)
    assert straight.lrs == pytest.approx([0.1 * scaffold.cosine(s / 6) for s in range(6)])
    assert straight.lrs[3] == pytest.approx(0.0525) and rec_a["steps"] == 6

    first, rec_1, _ = toy_run(tmp_path / "b.safetensors", 3)
    assert first.lrs == straight.lrs[:3] and rec_1["steps"] == 3
    resumed, rec_b, lines = toy_run(tmp_path / "b.safetensors", 6, resume=tmp_path / "b.safetensors")
    assert resumed.step == 6 and resumed.lrs == straight.lrs[3:]  # the schedule goes on where it stopped
    assert_same(weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors"))  # bit for bit
    assert [x["step"] for x in lines if "step" in x and "loss" in x] == [4, 5, 6]
    assert [x["lr"] for x in lines if "lr" in x] == pytest.approx(straight.lrs[3:])
    assert rec_b["resumed_from"]["step"] == 3 and rec_b["steps"] == 6
    assert [p["command"] for p in rec_b["phases"]] == ["toy --steps 3"] and rec_b["phases"][0]["steps"] == 3
    # a third phase keeps the first in its recipe
    _, rec_c, _ = toy_run(tmp_path / "b.safetensors", 8, resume=tmp_path / "b.safetensors")
    assert [p["command"] for p in rec_c["phases"]] == ["toy --steps 3", "toy --steps 6"]


def test_a_resumed_run_keeps_its_own_base_rate(tmp_path):
    toy_run(tmp_path / "m.safetensors", 2)
    resumed, _, _ = toy_run(tmp_path / "m.safetensors", 4, resume=tmp_path / "m.safetensors", lr=0.2)
    assert resumed.lrs == pytest.approx([0.2 * scaffold.cosine(2 / 6), 0.2 * scaffold.cosine(3 / 6)])


def test_resume_reads_gifnet_files_written_before_the_scaffold(tmp_path):
    toy_run(tmp_path / "a.safetensors", 4)
    toy_run(tmp_path / "b.safetensors", 2)
    rp = scaffold.resume_path(tmp_path / "b.safetensors")
    state = torch.load(rp, weights_only=True)
    rng = state.pop("rng")
    torch.save(state | {"sampler": rng["numpy"], "torch_rng": rng["torch"]}, rp)  # the older GIFNet layout
    toy_run(tmp_path / "b.safetensors", 4, resume=tmp_path / "b.safetensors")
    assert_same(weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors"))


def test_resume_without_its_optimiser_file_warns_and_starts_at_step_0(tmp_path):
    toy_run(tmp_path / "m.safetensors", 2)
    scaffold.resume_path(tmp_path / "m.safetensors").unlink()
    trainer, rec, lines = toy_run(tmp_path / "n.safetensors", 2, resume=tmp_path / "m.safetensors")
    assert "resuming weights only" in lines[0]["warning"] and trainer.lrs[0] == pytest.approx(0.1)
    assert "resumed_from" not in rec


def test_resume_path_sits_beside_the_model():
    assert scaffold.resume_path("/x/m.safetensors").name == "m.resume.pt"
    assert scaffold.resume_path("/x/m.v2.safetensors").name == "m.v2.resume.pt"


# ------------------------------------------------------------------------------------------ checkpoints
def test_a_failed_checkpoint_write_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "m.safetensors"
    trainer, _, _ = toy_run(out, 2)
    before_w, before_state = weights(out), torch.load(scaffold.resume_path(out), weights_only=True)
    assert before_state["step"] == 2 and json.loads(before_state["record"])["steps"] == 2
    args = argparse.Namespace(out=str(out), time_budget=0.0, command="toy")
    run, sampler = scaffold.Run(args), ToySampler(0)
    with torch.no_grad():
        trainer.net.weight += 1.0
    trainer.step = 3

    def garbage_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", garbage_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run.save(trainer, trainer, sampler)
    monkeypatch.undo()
    assert_same(weights(out), before_w)  # the earlier model file, whole
    assert torch.load(scaffold.resume_path(out), weights_only=True)["step"] == 2

    def half_then_fail(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run.save(trainer, trainer, sampler)
    monkeypatch.undo()
    assert torch.load(scaffold.resume_path(out), weights_only=True)["step"] == 2  # the earlier resume file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.resume.pt", "m.safetensors"]  # no partial files


def test_checkpoints_every_ckpt_every_steps_with_the_record(tmp_path, monkeypatch):
    saved = []
    real = scaffold.Run.save
    monkeypatch.setattr(scaffold.Run, "save", lambda self, *a: saved.append(dict(self.record)) or real(self, *a))
    toy_run(tmp_path / "m.safetensors", 5)
    assert [r["steps"] for r in saved] == [2, 4, 5]  # every 2 steps, then the end
    assert "first_losses" not in saved[0] and set(saved[-1]) >= {"first_losses", "final_losses", "seconds"}


# ------------------------------------------------------------------------------------------ seeding, budget
def test_the_seed_makes_two_runs_identical_and_another_seed_does_not(tmp_path):
    _, rec_a, _ = toy_run(tmp_path / "a.safetensors", 4, seed=3)
    _, rec_b, _ = toy_run(tmp_path / "b.safetensors", 4, seed=3)
    _, rec_c, _ = toy_run(tmp_path / "c.safetensors", 4, seed=4)
    assert_same(weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors"))
    assert rec_a["final_losses"] == rec_b["final_losses"] != rec_c["final_losses"]
    assert not torch.equal(weights(tmp_path / "a.safetensors")["weight"], weights(tmp_path / "c.safetensors")["weight"])


def test_torch_run_sets_determinism_and_threads_for_the_run_only():
    torch.use_deterministic_algorithms(False)
    threads = torch.get_num_threads()
    args = argparse.Namespace(seed=0, threads=1, device="cpu", deterministic=True, batch=None, crop=7, sizes={"batch": (32, 4), "crop": (160, 96)})
    with scaffold.torch_run(args) as device:
        assert device.type == "cpu" and torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
        assert (args.batch, args.crop) == (4, 7)  # the CPU default where none was given
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads


def test_time_budget_stops_the_run_and_a_non_finite_loss_raises(tmp_path):
    trainer, rec, lines = toy_run(tmp_path / "m.safetensors", 5, budget=1e-9)
    assert trainer.step == 0 and rec["steps"] == 0 and lines[0]["stop"] == "time budget"
    assert (tmp_path / "m.safetensors").is_file()
    args = argparse.Namespace(out=str(tmp_path / "x.safetensors"), steps=3, time_budget=0.0, resume=None, log=None, log_every=1,
                              ckpt_every=0, command="toy")
    run, toy = scaffold.Run(args, lambda s: None), ToyTrainer()

    def step(value):
        toy.step += 1
        return {"loss": value, "acc": float("nan")}  # accuracy may be NaN (no labelled pixel)

    run.train(toy, toy, ToySampler(0), lambda: step(1.0))
    toy.step = 0
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run.train(toy, toy, ToySampler(0), lambda: step(float("inf")))


# ------------------------------------------------------------------------------------------ the real trainers
def test_multitask_and_gifnet_trainers_resume_their_schedule_at_the_saved_step():
    from napari_fusion.methods.classes import BRATS_CLASSES
    from napari_fusion.methods.multitask import new_runner as new_multitask
    from napari_fusion.training.gifnet import GIFNetTrainer, lr_at
    from napari_fusion.training.gifnet import new_runner as new_gifnet
    from napari_fusion.training.multitask import MultiTaskConfig, MultiTaskTrainer

    cfg = MultiTaskConfig(lr=1e-3, warmup=10, total_steps=110, trunk_lr_scale=0.5)
    a = MultiTaskTrainer(new_multitask(BRATS_CLASSES, seed=0), cfg, "cpu")
    a.step = 60
    b = MultiTaskTrainer(new_multitask(BRATS_CLASSES, seed=0), cfg, "cpu")
    b.load_state_dict(a.state_dict())
    lr = 1e-3 * (0.05 + 0.95 * 0.5)  # half-way through the cosine
    assert [g["lr"] for g in b.opt.param_groups] == pytest.approx([0.5 * lr, lr]) and b.lr_at(60) == pytest.approx(lr)

    g = GIFNetTrainer(new_gifnet(0), lr=2e-3, device="cpu", schedule_steps=100)
    assert g.opt.param_groups[0]["lr"] == pytest.approx(lr_at(0.0, 2e-3))
    g.step = 51
    h = GIFNetTrainer(new_gifnet(0), lr=2e-3, device="cpu", schedule_steps=100)
    h.load_state_dict(g.state_dict())
    assert h.opt.param_groups[0]["lr"] == pytest.approx(lr_at(0.51, 2e-3)) == pytest.approx(2e-3 * 0.525)
