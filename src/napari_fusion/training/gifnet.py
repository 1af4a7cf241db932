"""Train GIFNet: multi-modal fusion learnt together with synthesised low-level tasks.

Every step trains all four tasks of one batch each, in one forward pass of the shared encoder:

- **fusion** (fusion branch, unsupervised): real registered pairs, infrared/visible (MSRS, RoadScene)
  and medical (MRI/CT, MRI/PET-Y); loss = L1 to the per-pixel maximum intensity + L1 between gradient
  magnitudes and the larger source gradient + an SSIM term to both sources.
- **focus** (focus branch, supervised): multi-focus pairs synthesised from sharp real images
  (:func:`~napari_fusion.training.synth.multi_focus`); loss = L1 + gradient L1 + SSIM to the sharp image.
- **exposure** (focus branch, supervised): multi-exposure pairs from well-exposed real images
  (:func:`~napari_fusion.training.synth.multi_exposure`), same loss to the original.
- **rec** (reconstruction branch): an image given to both inputs must come back; every other batch
  also asks the reconstruction branch for its own two inputs, so the shared encoder keeps both.

Only training pairs / images are used (`training.data.pair_split`: MSRS split.csv, elsewhere sorted index % 5 != 0).

Training material and the task sampler: :mod:`.gifnet_data`; the run itself (JSON-lines logs, atomic
checkpoints, resume, time budget, seeding): :mod:`.scaffold`. Command line::

    python -m napari_fusion.training.gifnet --data auto --out gifnet.safetensors --device auto \\
        --steps 20000 --time-budget 3600 --batch 16 --crop 192 --seed 0

``--data`` is ``auto`` (read ``../shared/data``) or a packed ``.npz`` with ``ivif_a_i``/``ivif_b_i``,
``med_a_i``/``med_b_i`` (uint8 Y pairs) and ``gray_i`` (single sharp images); see
``python -m napari_fusion.training.pack``. Without ``--time-budget`` a run is bit-reproducible on CPU
for a given seed; with it, the learning-rate schedule follows the elapsed time as well as the step
(so that a budget-limited run still anneals), which makes the result depend on the machine's speed.
The time budget counts the seconds of the runs a ``--resume`` continues.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import scaffold, synth
from .gifnet_data import TASKS, GIFNetData, TaskSampler, load_gifnet_data
from .losses import sobel

__all__ = [
    "TASKS",
    "GIFNetData",
    "load_gifnet_data",
    "TaskSampler",
    "LossWeights",
    "ssim",
    "fusion_task_loss",
    "supervised_loss",
    "reconstruction_loss",
    "GIFNetTrainer",
    "lr_at",
    "new_runner",
    "train",
    "build_parser",
    "main",
]


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two ``(N, C, H, W)`` batches in [0, 1] (Gaussian window, reflection padded)."""
    c = x.shape[1]
    g = _gauss_window(size, sigma, x.device, x.dtype)
    kx = g.reshape(1, 1, 1, -1).expand(c, 1, 1, size)
    ky = g.reshape(1, 1, -1, 1).expand(c, 1, size, 1)
    r = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (r, r, r, r), mode="reflect")
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()


@dataclass
class LossWeights:
    """Weights of the loss terms and of the tasks in the total loss."""

    intensity: float = 1.0
    gradient: float = 2.0
    ssim: float = 0.5
    task_fusion: float = 1.0
    task_focus: float = 1.0
    task_exposure: float = 1.0
    task_rec: float = 0.5
    rec_aux: float = 0.25  # reconstruction of each task's own inputs

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def fusion_task_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: LossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Unsupervised multi-modal fusion loss: intensity max + gradient max + SSIM to both sources."""
    w = w or LossWeights()
    l_int = (fused - torch.maximum(a, b)).abs().mean()
    l_grad = (_grad_mag(fused) - torch.maximum(_grad_mag(a), _grad_mag(b))).abs().mean()
    l_ssim = 1.0 - 0.5 * (ssim(fused, a) + ssim(fused, b))
    total = w.intensity * l_int + w.gradient * l_grad + w.ssim * l_ssim
    return total, {"int": float(l_int.detach()), "grad": float(l_grad.detach()), "ssim": float(l_ssim.detach())}


def supervised_loss(out: torch.Tensor, target: torch.Tensor, w: LossWeights | None = None) -> torch.Tensor:
    """Loss to a known target: L1 + L1 of the Sobel derivatives + SSIM."""
    w = w or LossWeights()
    ox, oy = sobel(out)
    tx, ty = sobel(target)
    l_grad = (ox - tx).abs().mean() + (oy - ty).abs().mean()
    return w.intensity * (out - target).abs().mean() + w.gradient * l_grad + w.ssim * (1.0 - ssim(out, target))


def reconstruction_loss(rec: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reconstruction branch's two channels against the two inputs: L1 + (1 - SSIM)."""
    t = torch.cat([a, b], 1)
    return (rec - t).abs().mean() + 0.5 * (1.0 - ssim(rec, t))


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class GIFNetTrainer:
    """One optimiser over the whole GIFNet; :meth:`train_step` trains all four tasks on one batch each.

    The runner's net is trained in place (copy the runner first to keep the original). AdamW at
    ``lr``; with ``schedule_steps`` the rate follows :func:`lr_at` over that many steps (or over the
    time budget, ``time_fraction``, when that is further along), else it stays at ``lr``.
    """

    def __init__(self, runner, lr: float = 2e-3, weights: LossWeights | None = None, device: str | torch.device | None = None,
                 amp: bool = False, seed: int = 0, weight_decay: float = 1e-4, schedule_steps: int = 0):
        from ..methods.torch_runner import resolve_torch_device

        self.runner = runner
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        self.net = runner.net
        self.weights = weights or LossWeights()
        self.amp = amp
        self.lr = lr
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.gen = torch.Generator().manual_seed(seed + 7919)  # synthesis randomness (CPU: same on every device)
        self.step = 0
        self.schedule_steps = int(schedule_steps)
        self.time_fraction: Callable[[], float] = lambda: 0.0  # share of a time budget spent (the run sets it)
        self.sched = scaffold.lr_schedule(self.opt, self.lr_factor)
        self.last_lr: float | None = None

    def lr_factor(self, step: int) -> float:
        """The learning rate of a step as a share of ``lr``."""
        if not self.schedule_steps:
            return 1.0
        return lr_at(max(step / self.schedule_steps, self.time_fraction()), 1.0)

    def make_inputs(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Device tensors ``(a, b, target)`` per task from the sampler's crops (synthesis happens here)."""
        dev = self.device
        out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for task, t in batches.items():
            t = tuple(x.to(dev, non_blocking=True) for x in t)
            if task == "fusion":
                out[task] = (t[0], t[1], None)
            elif task == "focus":
                out[task] = synth.multi_focus(t[0], self.gen)
            elif task == "exposure":
                out[task] = synth.multi_exposure(t[0], self.gen)
            elif task == "rec":
                out[task] = synth.reconstruction(t[0])
            else:
                raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return out

    def losses(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and per-task values for one set of task batches (one shared forward pass)."""
        w = self.weights
        tasks = list(inputs)
        sizes = [inputs[k][0].shape[0] for k in tasks]
        a = torch.cat([inputs[k][0] for k in tasks])
        b = torch.cat([inputs[k][1] for k in tasks])
        with scaffold.autocast(self.device, self.amp):
            shared, f, m = self.net.features(a, b)
            rec = self.net.reconstruct(shared).float()
        parts: dict[str, float] = {}
        total = a.new_zeros(())
        start = 0
        for k, n in zip(tasks, sizes):
            sl = slice(start, start + n)
            start += n
            ak, bk, tk = inputs[k]
            if k == "fusion":
                with scaffold.autocast(self.device, self.amp):
                    out = self.net.decode(shared[sl], f[sl]).float()
                lk, sub = fusion_task_loss(out, ak, bk, w)
                parts |= {f"fusion_{s}": v for s, v in sub.items()}
                total = total + w.task_fusion * lk
            elif k in ("focus", "exposure"):
                with scaffold.autocast(self.device, self.amp):
                    out = self.net.decode(shared[sl], m[sl]).float()
                lk = supervised_loss(out, tk, w)
                total = total + (w.task_focus if k == "focus" else w.task_exposure) * lk
            else:  # rec: the image given twice must come back from the reconstruction branch
                lk = reconstruction_loss(rec[sl], ak, bk)
                total = total + w.task_rec * lk
            parts[k] = float(lk.detach())
        if w.rec_aux > 0:
            others = [i for i, k in enumerate(tasks) if k != "rec"]
            if others:
                idx = torch.cat([torch.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in others]).to(a.device)
                la = reconstruction_loss(rec[idx], a[idx], b[idx])
                parts["rec_aux"] = float(la.detach())
                total = total + w.rec_aux * la
        parts["total"] = float(total.detach())
        return total, parts

    def train_step(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """One optimiser step on one batch per task; returns the losses (before the step)."""
        self.net.train()
        inputs = self.make_inputs(batches)
        total, parts = self.losses(inputs)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.last_lr = self.sched.get_last_lr()[0]
        self.step += 1
        self.sched.step()
        return parts

    @torch.no_grad()
    def evaluate(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """The losses of fixed batches without training (e.g. before/after a few steps)."""
        self.net.eval()
        state = self.gen.get_state()
        self.gen.manual_seed(12345)  # the same synthesised pairs every time
        try:
            _, parts = self.losses(self.make_inputs(batches))
        finally:
            self.gen.set_state(state)
        return parts

    def finish(self):
        """Back to inference mode; returns the runner."""
        self.net.eval()
        return self.runner

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Step, optimiser moments and synthesis generator of an earlier run; the schedule continues
        from that step at this trainer's ``lr``."""
        self.step = int(state["step"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.sched = scaffold.lr_schedule(self.opt, self.lr_factor, self.step, self.sched.base_lrs)


# --------------------------------------------------------------------------------------------
# the training run (CLI)
# --------------------------------------------------------------------------------------------
def new_runner(seed: int = 0, device: str | torch.device = "cpu", **config: Any):
    """A freshly initialised (seeded) GIFNet runner."""
    from ..methods.gifnet import GIFNet, GIFNetRunner

    torch.manual_seed(seed)
    return GIFNetRunner(GIFNet(**config), device=device, meta={"method": "gifnet"})


def lr_at(progress: float, base: float, warmup: float = 0.02, floor: float = 0.05) -> float:
    """Learning rate at a training progress in [0, 1]: linear warm-up, then cosine down to ``floor * base``."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return base * max(p / warmup, 0.05)
    return base * scaffold.cosine((p - warmup) / max(1.0 - warmup, 1e-9), floor)


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record (also in the model file)."""
    from ..methods.gifnet import load_runner

    with scaffold.torch_run(args) as device:
        data = load_gifnet_data(args.data)
        sampler = TaskSampler(data, args.crop, seed=args.seed)
        weights = LossWeights(task_rec=args.rec_weight)
        run = scaffold.Run(args, log, budget_spans_resumes=True)
        run.record |= {
            "data": f"{data.source}: {data.summary()}",
            "seed": args.seed,
            "device": str(device),
            "batch_per_task": args.batch,
            "crop": args.crop,
            "lr": args.lr,
            "schedule_steps": args.schedule_steps or args.steps,
            "loss_weights": weights.to_dict(),
            "torch": torch.__version__,
        }
        runner = load_runner(args.resume, device=device) if args.resume else new_runner(args.seed, device)
        trainer = GIFNetTrainer(runner, args.lr, weights, device, amp=args.amp, seed=args.seed,
                                schedule_steps=args.schedule_steps or args.steps)
        run.record["n_parameters"] = runner.n_parameters
        run.start(trainer, sampler)
        run.train(runner, trainer, sampler, lambda: trainer.train_step({k: sampler.batch(k, args.batch) for k in TASKS}))
        trainer.finish()
        return run.end(runner, trainer, sampler)


def build_parser() -> argparse.ArgumentParser:
    ap = scaffold.new_parser("napari_fusion.training.gifnet", __doc__)
    ap.add_argument("--data", default="auto", help="'auto' (../shared/data) or a packed .npz (ivif_*, med_*, gray_*)")
    scaffold.add_run_arguments(ap, steps=4000, batch=(24, 4), crop=(192, 96), batch_help="crops per task and step",
                               deterministic=False)
    ap.add_argument("--schedule-steps", type=int, default=0,
                    help="length of the learning-rate schedule in steps (default: --steps); set it to stop a run "
                         "early and --resume it later exactly as if it had not stopped")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (warm-up, then cosine)")
    ap.add_argument("--rec-weight", type=float, default=0.5, help="weight of the reconstruction task")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return scaffold.run_main(build_parser(), train, argv)


if __name__ == "__main__":
    main()
