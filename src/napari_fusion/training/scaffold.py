"""The training scaffold of the GIFNet, MultiTaskVIF and TDFusion trainers.

A trainer module brings its data, its model and its step; this module does the rest, the same way
for all three:

- the common command-line flags (:func:`add_run_arguments`) and the exact command, recorded in the
  model file;
- seed, determinism, CPU threads and CUDA flags of one run, put back afterwards (:func:`torch_run`);
- ``--resume``: the trainer's step and optimiser state and the random states of ``OUT.resume.pt``;
  the record of the run it continues joins ``phases`` (the whole recipe, oldest first);
- the time budget, JSON-lines progress (running means of the losses), checkpoints every
  ``--ckpt-every`` steps and at the end: the model file (:func:`~napari_fusion.methods.store.save_bundle`)
  and the resume file beside it, each written atomically (:mod:`napari_fusion.io.atomic`);
- learning-rate schedules on :class:`torch.optim.lr_scheduler.LambdaLR` placed at the trainer's step
  (:func:`lr_schedule`), so that a resumed run continues its schedule where it stopped.

A trainer the scaffold drives has ``step`` (optimiser steps taken), ``state_dict()`` /
``load_state_dict()``, ``finish()``, and ``time_fraction`` (a callable the run sets: the share of the
time budget spent) and ``last_lr`` (the rate of the last step, logged) where it has a schedule.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "new_parser",
    "add_run_arguments",
    "run_main",
    "torch_run",
    "Run",
    "resume_path",
    "lr_schedule",
    "cosine",
    "autocast",
]


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def new_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m module`` with the module's docstring as its description."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_arguments(ap: argparse.ArgumentParser, *, steps: int, batch: tuple[int, int], crop: tuple[int, int],
                      batch_help: str = "crops per step", deterministic: bool = True) -> None:
    """The flags every trainer has; ``batch`` and ``crop`` are the defaults (on a GPU, on CPU)."""
    ap.add_argument("--out", required=True, help="model file to write (.safetensors); optimiser state goes beside it (.resume.pt)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--steps", type=int, default=steps, help="total optimiser steps (a resumed run continues up to this)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--batch", type=int, default=None, help=f"{batch_help} (default: {batch[0]} on a GPU, {batch[1]} on CPU)")
    ap.add_argument("--crop", type=int, default=None, help=f"crop side in pixels (default: {crop[0]} on a GPU, {crop[1]} on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", default=None, help="model file of an earlier run to continue (its .resume.pt beside it)")
    ap.add_argument("--log", default=None, help="append JSON-lines losses to this file")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    if deterministic:
        ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.set_defaults(sizes={"batch": batch, "crop": crop})


def run_main(ap: argparse.ArgumentParser, train: Callable[[argparse.Namespace], Any], argv: Sequence[str] | None) -> Any:
    """Parse ``argv`` (default: the process's), note the exact command in ``args.command``, train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    args.command = " ".join([ap.prog, *map(shlex.quote, argv)])
    return train(args)


@contextmanager
def torch_run(args: argparse.Namespace) -> Iterator[torch.device]:
    """Seed, determinism, threads and device of one run (and the GPU/CPU defaults of ``--batch`` and
    ``--crop``); the process-wide torch settings come back afterwards (trainers also run in-process)."""
    from ..methods.torch_runner import resolve_torch_device

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.get_num_threads())
    deterministic = bool(getattr(args, "deterministic", False))
    try:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if args.threads:
            torch.set_num_threads(args.threads)
        device = resolve_torch_device(args.device)
        gpu = device.type in ("cuda", "mps")
        for name, (on_gpu, on_cpu) in getattr(args, "sizes", {}).items():
            setattr(args, name, getattr(args, name) or (on_gpu if gpu else on_cpu))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        yield device
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.set_num_threads(saved[2])


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` (``--amp``), else a context that changes nothing."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# learning-rate schedules
# --------------------------------------------------------------------------------------------
def cosine(t: float, floor: float = 0.05) -> float:
    """Cosine decay from 1 at ``t = 0`` to ``floor`` at ``t >= 1``."""
    t = min(max(t, 0.0), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def lr_schedule(opt: torch.optim.Optimizer, factor: Callable[[int], float], step: int = 0,
                base_lrs: Sequence[float] | None = None) -> LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` placed at ``step``: each group's rate is its base
    rate times ``factor(step)``; call its ``step()`` after each optimiser step.

    ``base_lrs`` (default: the groups' current rates): after loading an optimiser state, pass the
    base rates of the scheduler made before, so that the rates stay this run's own and only the
    position (the saved step) comes from the file; resume files hold no scheduler state.
    """
    bases = list(base_lrs) if base_lrs is not None else [g["lr"] for g in opt.param_groups]
    for g, base in zip(opt.param_groups, bases, strict=True):
        g["initial_lr"] = base
    return LambdaLR(opt, factor, last_epoch=step - 1)


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------
def resume_path(out: str | Path) -> Path:
    """The optimiser/random-state file beside a model file: ``NAME.resume.pt``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".resume.pt")


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in d.items()}


class Run:
    """One training run: the record stored in the model, the clock, the losses' running means, the
    progress log and the checkpoints.

    ``budget_spans_resumes``: the time budget (and a schedule's time share) counts the seconds of
    the runs a resumed run continues, not only its own.
    """

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None] = print, *, budget_spans_resumes: bool = False):
        self.args, self.log = args, log
        self.out = Path(args.out)
        self.record: dict[str, Any] = {"command": args.command}
        self.budget = float(args.time_budget or 0.0)
        self.budget_spans_resumes = budget_spans_resumes
        self.prev_seconds = 0.0
        self.t0 = time.time()
        self.ema: dict[str, float] = {}
        self.first: dict[str, float] = {}

    def seconds(self) -> float:
        """Training seconds so far, those of the runs this one continues included."""
        return time.time() - self.t0 + self.prev_seconds

    def time_fraction(self) -> float:
        """The share of the time budget spent (0 without a budget)."""
        if not self.budget:
            return 0.0
        return (self.seconds() if self.budget_spans_resumes else time.time() - self.t0) / self.budget

    def start(self, trainer, sampler) -> None:
        """Start the clock, give the trainer its time share and, with ``--resume``, continue that run:
        the trainer's state, the random states (torch and ``sampler.rng``), ``resumed_from`` and ``phases``."""
        self.t0 = time.time()
        trainer.time_fraction = self.time_fraction
        if not self.args.resume:
            return
        path = resume_path(self.args.resume)
        if not path.is_file():
            self.log(json.dumps({"warning": f"no optimiser state {path}; resuming weights only"}))
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        prev = json.loads(state.get("record", "{}"))
        self.prev_seconds = float(prev.get("seconds", 0.0))
        trainer.load_state_dict(state)
        rng = state.get("rng") or {"torch": state["torch_rng"], "numpy": state["sampler"]}  # GIFNet files before the scaffold
        torch.set_rng_state(rng["torch"])
        sampler.rng.bit_generator.state = json.loads(rng["numpy"])
        self.record["resumed_from"] = {"file": str(self.args.resume), "step": trainer.step, "seconds": self.prev_seconds}
        self.record["phases"] = [*prev.get("phases", []), {k: prev.get(k) for k in ("command", "steps", "seconds", "final_losses")}]

    def train(self, runner, trainer, sampler, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Call ``step`` (one training step; returns its losses) until ``--steps`` or the time budget;
        logs the running means every ``--log-every`` steps, checkpoints every ``--ckpt-every``.
        Returns the record with ``steps``, ``seconds``, ``first_losses`` and ``final_losses``."""
        a = self.args
        logf = open(a.log, "a") if a.log else None
        try:
            while trainer.step < a.steps:
                if self.budget and self.time_fraction() >= 1.0:
                    self.log(json.dumps({"stop": "time budget", "step": trainer.step, "seconds": round(self.seconds(), 1)}))
                    break
                self._update(step(), trainer.step)
                if trainer.step % a.log_every == 0 or trainer.step == a.steps:
                    line = {"step": trainer.step, "seconds": round(self.seconds(), 2)}
                    if getattr(trainer, "last_lr", None) is not None:
                        line["lr"] = trainer.last_lr
                    s = json.dumps(line | _rounded(self.ema))
                    self.log(s)
                    if logf:
                        logf.write(s + "\n")
                        logf.flush()
                if a.ckpt_every and trainer.step % a.ckpt_every == 0 and trainer.step < a.steps:
                    self.record |= {"steps": trainer.step, "seconds": round(self.seconds(), 1), "final_losses": _rounded(self.ema)}
                    self.save(runner, trainer, sampler)
        finally:
            if logf:
                logf.close()
        self.record |= {"steps": trainer.step, "seconds": round(self.seconds(), 1),
                        "first_losses": _rounded(self.first), "final_losses": _rounded(self.ema)}
        return self.record

    def _update(self, row: dict[str, Any], step: int) -> None:
        bad = {k: v for k, v in row.items() if k != "acc" and isinstance(v, float) and not math.isfinite(v)}
        if bad:  # (accuracy is NaN for a batch without labelled pixels)
            raise FloatingPointError(f"non-finite loss at step {step}: {bad}")
        for k, v in row.items():
            if isinstance(v, float) and math.isfinite(v):
                self.ema[k] = v if k not in self.ema else 0.95 * self.ema[k] + 0.05 * v
                self.first.setdefault(k, v)

    def save(self, runner, trainer, sampler) -> None:
        """The model file (weights, metadata and this record under ``training``) and the resume file
        beside it (trainer state, random states, record), each written atomically."""
        from ..io.atomic import atomic_path
        from ..methods.store import save_bundle

        tensors, meta = runner.to_bundle()
        meta["training"] = self.record
        save_bundle(self.out, tensors, meta)
        rng = {"torch": torch.get_rng_state(), "numpy": json.dumps(sampler.rng.bit_generator.state)}
        state = trainer.state_dict() | {"rng": rng, "record": json.dumps(self.record)}
        with atomic_path(resume_path(self.out)) as tmp:
            torch.save(state, tmp)

    def end(self, runner, trainer, sampler) -> dict[str, Any]:
        """Save the finished model (and its resume file), log the final record and return it."""
        self.save(runner, trainer, sampler)
        self.log(json.dumps({"final": self.record}))
        return self.record
