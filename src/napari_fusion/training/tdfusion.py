"""Train TDFusion: bi-level meta-learning of the fusion loss from a segmentation task.

One training step alternates three updates (Bai et al., CVPR 2025):

(i)  meta step (loss generation module): a functional copy of the fusion net's parameters takes one
     SGD step on the *learned* fusion loss with the graph kept (``create_graph=True``); the segmenter's
     task loss on images fused by that updated copy is back-propagated through the inner step into the
     loss module only (``torch.func.functional_call``). The loss module thus learns the per-pixel
     source weights whose fusion the segmenter finds most useful.
(ii) fusion step: the real fusion net takes an optimiser step on the learned fusion loss.
(iii) task step: the segmenter takes an optimiser step on the task loss of the (detached) fused image.

Without labels (infrared/visible) only (ii) runs, with the loss module at its neutral start (equal
weights): the fusion net that painted labels later make task-driven (:mod:`.finetune`).

Training data and crop samplers: :mod:`.data`, :mod:`.samplers`; the run itself (JSON-lines logs,
atomic checkpoints, resume with the earlier runs as ``phases``, time budget, seeding): :mod:`.scaffold`.
Command line::

    python -m napari_fusion.training.tdfusion --task brats --data auto --out tdfusion_brats.safetensors \\
        --device auto --steps 4000 --time-budget 3600 --batch 8 --crop 128 --seed 0
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call

from . import scaffold
from .data import box_labels  # noqa: F401  (benchmarks/ivif_task.py still imports it from here)
from .data import load_training_data
from .losses import IGNORE_INDEX, class_weights_from_counts, fusion_loss, task_loss
from .samplers import BratsSampler, PairSampler

__all__ = [
    "TrainConfig",
    "TDFusionTrainer",
    "meta_step",
    "fusion_step",
    "segmenter_step",
    "new_runner",
    "train",
    "build_parser",
    "main",
]


# --------------------------------------------------------------------------------------------
# the three updates
# --------------------------------------------------------------------------------------------
def _f32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision autocast outputs -> float32 for the losses; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


META_MODES = ("image", "params")


def meta_step(
    fusion: torch.nn.Module,
    loss_net: torch.nn.Module,
    segmenter: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    opt_loss: torch.optim.Optimizer | None,
    *,
    mode: str = "params",
    inner_lr: float = 1e-2,
    image_step: float = 0.05,
    grad_weight: float = 1.0,
    intensity: str = "l2",
    max_weight: float = 0.0,
    grad_target: str = "max",
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
    create_graph: bool = True,
    amp: bool = False,
    task_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """(i) One bi-level update of the loss generation module; fusion net and segmenter are unchanged.

    ``mode="params"`` (the paper's form): ``theta' = theta - inner_lr * dL_fus(theta, w(phi)) / dtheta``
    with the graph kept; the outer task loss ``T(seg(F_theta'(a, b)), labels)`` is differentiated
    w.r.t. the loss module's ``phi`` (a second-order pass through the fusion net: 3-4x the cost of
    the image step on a CPU; its signal is measured in ``benchmarks/meta_gradient.py``).

    ``mode="image"``: the inner step is taken on the fused image itself,
    ``F' = F - image_step * g / mean|g|`` with ``g = dL_fus(F, w(phi)) / dF`` (graph kept), i.e. the
    update a fusion net with a free output per pixel would make; then ``T(seg(F'))`` is differentiated
    w.r.t. ``phi``. Each pixel's weight gets the task's verdict on moving *that* pixel towards A or B
    (``-sign(F - A) * dT/dF'`` for the l1 loss): a strong, local, readable signal at the cost of one
    segmenter pass (no second-order pass through the fusion net).

    ``task_fn``: the outer task loss of the updated fused image, in place of the segmenter's
    cross-entropy on ``labels`` (e.g. a detector's loss: :mod:`.tdfusion_det`).

    Leaves ``.grad`` of the loss module's parameters set (so callers/tests can inspect it) and steps
    ``opt_loss`` when given. ``create_graph=False`` cuts the bi-level graph (then the loss module gets
    no gradient).
    """
    if mode not in META_MODES:
        raise ValueError(f"meta mode must be one of {META_MODES}, got {mode!r}")
    phi = [p for p in loss_net.parameters() if p.requires_grad]
    if mode == "image":
        with torch.no_grad(), scaffold.autocast(a.device, amp):
            fused = _f32(fusion(a, b))
        fused = fused.detach().requires_grad_(True)
        w = _f32(loss_net(a, b))
        lf, _ = fusion_loss(fused, a, b, w, grad_weight, intensity, max_weight, grad_target)
        (g,) = torch.autograd.grad(lf, fused, create_graph=create_graph)
        scale = g.detach().abs().mean().clamp_min(1e-12)
        fused2 = (fused.detach() - image_step * g / scale).clamp(0.0, 1.0)
    else:
        params = {k: p for k, p in fusion.named_parameters()}
        with scaffold.autocast(a.device, amp):
            fused = functional_call(fusion, params, (a, b))
            w = loss_net(a, b)
            lf, _ = fusion_loss(_f32(fused), a, b, _f32(w), grad_weight, intensity, max_weight, grad_target)
        grads = torch.autograd.grad(lf, list(params.values()), create_graph=create_graph, allow_unused=True)
        updated = {
            k: (p - inner_lr * g) if g is not None else p for (k, p), g in zip(params.items(), grads)
        }
        with scaffold.autocast(a.device, amp):
            fused2 = functional_call(fusion, updated, (a, b))
    if task_fn is not None:
        lt = task_fn(fused2)
    else:
        with scaffold.autocast(a.device, amp):
            logits = segmenter(fused2)
        lt = task_loss(_f32(logits), labels, ignore_index, class_weights)
    if opt_loss is not None:
        opt_loss.zero_grad(set_to_none=True)
    if lt.requires_grad:
        g_phi = torch.autograd.grad(lt, phi, allow_unused=True)
    else:
        g_phi = [None] * len(phi)
    norm = 0.0
    for p, g in zip(phi, g_phi):
        p.grad = torch.zeros_like(p) if g is None else g.detach()
        norm += float(p.grad.pow(2).sum())
    if opt_loss is not None:
        opt_loss.step()
    return {"meta_task": float(lt.detach()), "meta_fusion": float(lf.detach()), "meta_grad_norm": math.sqrt(norm)}


def fusion_step(
    fusion: torch.nn.Module,
    loss_net: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    opt_fusion: torch.optim.Optimizer,
    *,
    grad_weight: float = 1.0,
    intensity: str = "l2",
    max_weight: float = 0.0,
    grad_target: str = "max",
    amp: bool = False,
) -> dict[str, float]:
    """(ii) One optimiser step of the fusion net on the learned fusion loss (loss module frozen)."""
    with torch.no_grad(), scaffold.autocast(a.device, amp):
        w = _f32(loss_net(a, b))
    with scaffold.autocast(a.device, amp):
        fused = fusion(a, b)
    lf, parts = fusion_loss(_f32(fused), a, b, w, grad_weight, intensity, max_weight, grad_target)
    opt_fusion.zero_grad(set_to_none=True)
    lf.backward()
    opt_fusion.step()
    return {
        "fusion": float(lf.detach()),
        "int": float(parts["int"].detach()),
        "grad": float(parts["grad"].detach()),
        "w_a": float(w[:, 0].mean()),
    } | ({"max": float(parts["max"].detach())} if "max" in parts else {})


def segmenter_step(
    fusion: torch.nn.Module,
    segmenter: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    opt_seg: torch.optim.Optimizer,
    *,
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
    amp: bool = False,
    fused: torch.Tensor | None = None,
    clip: float | None = None,
) -> dict[str, float]:
    """(iii) One optimiser step of the segmenter on the task loss of the detached fused image.

    ``fused`` may be given directly (e.g. a single source, for the benchmark's baselines); ``clip``
    caps the gradient norm (fine-tuning: a few noisy painted pixels must not throw the head into
    predicting one class everywhere).
    """
    if fused is None:
        with torch.no_grad(), scaffold.autocast(a.device, amp):
            fused = _f32(fusion(a, b))
    with scaffold.autocast(fused.device, amp):
        logits = segmenter(fused)
    lt = task_loss(_f32(logits), labels, ignore_index, class_weights)
    opt_seg.zero_grad(set_to_none=True)
    lt.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(segmenter.parameters(), clip)
    opt_seg.step()
    with torch.no_grad():
        valid = labels != ignore_index
        acc = float((logits.argmax(1)[valid] == labels[valid]).float().mean()) if bool(valid.any()) else float("nan")
    return {"task": float(lt.detach()), "acc": acc}


# --------------------------------------------------------------------------------------------
# a trainer holding the models and optimisers (used by the CLI and by fine-tuning)
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyper-parameters of one TDFusion training (CLI flags map onto these)."""

    lr_fusion: float = 1e-3
    lr_seg: float = 1e-3
    lr_loss: float = 1e-3
    inner_lr: float = 1e-2
    grad_weight: float = 1.0
    meta_every: int = 1  # meta step every k-th train step (0: never)
    meta_start: int = 0  # no meta step before this step (let the segmenter learn first)
    amp: bool = False
    ignore_index: int = IGNORE_INDEX
    class_weights: list[float] | None = None
    train_fusion: bool = True
    train_seg: bool = True
    seg_repeats: int = 1  # segmenter updates per step on the same fused batch (cheap; helps a fresh head)
    seg_clip: float | None = None  # gradient-norm cap of the segmenter updates (None: no cap)
    intensity: str = "l2"  # intensity term of the fusion loss: "l1" (weighted median) or "l2" (blend)
    meta_mode: str = "params"  # "params" (inner step on the fusion net) or "image" (on the fused image)
    image_step: float = 0.05  # mean intensity change of the image-space inner step
    max_weight: float = 0.0  # weight of the fixed l1 term towards max(A, B) (0: none, older files)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TDFusionTrainer:
    """The three updates of TDFusion on a :class:`~napari_fusion.methods.tdfusion.TDFusionRunner`'s modules.

    The runner's modules are trained in place; make a copy first to keep the original.
    """

    def __init__(self, runner, config: TrainConfig | None = None, device: str | torch.device | None = None):
        from ..methods.torch_runner import resolve_torch_device

        self.runner = runner
        self.config = config or TrainConfig()
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        # channels-last speeds up inference but makes the double backward of the meta step several
        # times slower on CPU: train in the default layout (finish() restores the runner's layout)
        for m in runner.modules.values():
            m.to(memory_format=torch.contiguous_format)
        self.fusion = runner.fusion
        self.loss_net = runner.loss_net
        self.segmenter = runner.segmenter
        c = self.config
        self.opt_fusion = torch.optim.Adam(self.fusion.parameters(), lr=c.lr_fusion)
        self.opt_loss = torch.optim.Adam(self.loss_net.parameters(), lr=c.lr_loss)
        self.opt_seg = torch.optim.Adam(self.segmenter.parameters(), lr=c.lr_seg) if self.segmenter is not None else None
        self.class_weights = (
            torch.tensor(c.class_weights, dtype=torch.float32, device=self.device) if c.class_weights else None
        )
        self.step = 0

    def finish(self):
        """Put the runner back in inference mode and layout; returns it."""
        self.runner.to(self.device)
        for m in self.runner.modules.values():
            m.eval()
        return self.runner

    def rebuild_segmenter_optimizer(self) -> None:
        """After the segmenter was replaced or its head extended."""
        self.segmenter = self.runner.segmenter
        self.opt_seg = torch.optim.Adam(self.segmenter.parameters(), lr=self.config.lr_seg)

    def _train_mode(self) -> None:
        for m in (self.fusion, self.loss_net, self.segmenter):
            if m is not None:
                m.train()

    def train_step(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """One alternation (i) meta, (ii) fusion, (iii) task on a batch; returns the losses."""
        self._train_mode()
        c = self.config
        a = a.to(self.device, non_blocking=True)
        b = b.to(self.device, non_blocking=True)
        out: dict[str, float] = {"step": self.step}
        has_task = labels is not None and self.segmenter is not None
        if has_task:
            labels = labels.to(self.device, non_blocking=True)
        if has_task and c.meta_every and self.step >= c.meta_start and self.step % c.meta_every == 0:
            out |= meta_step(
                self.fusion, self.loss_net, self.segmenter, a, b, labels, self.opt_loss,
                mode=c.meta_mode, inner_lr=c.inner_lr, image_step=c.image_step, grad_weight=c.grad_weight,
                intensity=c.intensity, max_weight=c.max_weight, ignore_index=c.ignore_index,
                class_weights=self.class_weights, amp=c.amp,
            )
            # the meta pass leaves grads on the fusion net / segmenter only via autograd.grad (none)
        if c.train_fusion:
            out |= fusion_step(
                self.fusion, self.loss_net, a, b, self.opt_fusion, grad_weight=c.grad_weight, intensity=c.intensity,
                max_weight=c.max_weight, amp=c.amp
            )
        if has_task and c.train_seg:
            with torch.no_grad(), scaffold.autocast(a.device, c.amp):
                fused = _f32(self.fusion(a, b))
            for _ in range(max(1, c.seg_repeats)):
                out |= segmenter_step(
                    self.fusion, self.segmenter, a, b, labels, self.opt_seg,
                    ignore_index=c.ignore_index, class_weights=self.class_weights, amp=c.amp, fused=fused, clip=c.seg_clip,
                )
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimiser states and the step (for resuming)."""
        return {
            "step": self.step,
            "opt_fusion": self.opt_fusion.state_dict(),
            "opt_loss": self.opt_loss.state_dict(),
            "opt_seg": self.opt_seg.state_dict() if self.opt_seg is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optimiser moments and the step of an earlier run; the learning rates stay this run's own
        (a resumed phase may use another rate than the run it continues)."""
        self.step = int(state["step"])
        c = self.config
        for opt, key, lr in ((self.opt_fusion, "opt_fusion", c.lr_fusion), (self.opt_loss, "opt_loss", c.lr_loss),
                             (self.opt_seg, "opt_seg", c.lr_seg)):
            if opt is not None and state.get(key) is not None:
                opt.load_state_dict(state[key])
                for g in opt.param_groups:
                    g["lr"] = lr


# --------------------------------------------------------------------------------------------
# the training run (CLI)
# --------------------------------------------------------------------------------------------
def new_runner(task: str, seed: int = 0, device: str | torch.device = "cpu", labelled: bool = False,
               fusion_config: dict | None = None, loss_config: dict | None = None):
    """A freshly initialised TDFusion runner for ``task`` (seeded); ``labelled`` ivif: with the
    object segmenter (background, person, bicycle, car). ``fusion_config`` / ``loss_config``:
    FusionNet / LossNet arguments."""
    from ..methods.classes import BRATS_CLASSES, BRATS_INPUT_INTENSITY, IVIF_CLASSES
    from ..methods.segmenter import Segmenter
    from ..methods.tdfusion import FusionNet, LossNet, TDFusionRunner, make_classes

    torch.manual_seed(seed)
    fusion, loss_net = FusionNet(**(fusion_config or {})), LossNet(**(loss_config or {}))
    if task == "brats":
        seg = Segmenter(len(BRATS_CLASSES))
        meta = {"method": "tdfusion-brats", "input_intensity": dict(BRATS_INPUT_INTENSITY)}
        return TDFusionRunner(fusion, loss_net, seg, classes=make_classes(BRATS_CLASSES), device=device, meta=meta)
    if labelled:
        seg = Segmenter(len(IVIF_CLASSES))
        return TDFusionRunner(fusion, loss_net, seg, classes=make_classes(IVIF_CLASSES), device=device, meta={"method": "tdfusion"})
    return TDFusionRunner(fusion, loss_net, None, device=device, meta={"method": "tdfusion"})


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record."""
    from ..methods.classes import IVIF_CLASSES
    from ..methods.tdfusion import load_runner

    with scaffold.torch_run(args) as device:
        data = load_training_data(args.task, args.data)
        if args.task == "brats":
            sampler = BratsSampler(data["a"], data["b"], data["labels"], args.crop, seed=args.seed)
            cw = class_weights_from_counts(sampler.class_counts(5)).tolist() if args.class_weights else None
        else:
            labels = data.get("labels") if args.labels else None
            sampler = PairSampler(data["pairs"], args.crop, seed=args.seed, labels=labels, object_fraction=args.object_fraction)
            cw = class_weights_from_counts(sampler.class_counts(len(IVIF_CLASSES))).tolist() if labels and args.class_weights else None
        labelled = args.task == "brats" or sampler.labels is not None
        cfg = TrainConfig(
            lr_fusion=args.lr, lr_seg=args.lr, lr_loss=args.lr_loss, inner_lr=args.inner_lr,
            grad_weight=args.grad_weight, meta_every=args.meta_every if labelled else 0,
            meta_start=args.meta_start, amp=args.amp, class_weights=cw, intensity=args.intensity,
            meta_mode=args.meta_mode, image_step=args.image_step, seg_repeats=args.seg_repeats,
            train_fusion=not args.freeze_fusion, max_weight=args.max_weight,
        )
        run = scaffold.Run(args, log)
        run.record |= {"task": args.task, "data": data["source"], "seed": args.seed, "device": str(device), "batch": args.batch,
                       "crop": args.crop, "config": cfg.to_dict(), "torch": torch.__version__}
        if args.resume:
            runner = load_runner(args.resume, device=device)
        else:
            runner = new_runner(args.task, args.seed, device, labelled=labelled,
                                fusion_config=_parse_config(args.fusion_config), loss_config=_parse_config(args.loss_config))
        trainer = TDFusionTrainer(runner, cfg, device)
        run.start(trainer, sampler)
        record = run.train(runner, trainer, sampler, lambda: trainer.train_step(*sampler.batch(args.batch)))
        trainer.finish()
        if args.task == "brats" and args.eval_slices:
            from .evaluate import dice_on_slices

            # a quick report on full training slices (the test cases are for benchmarks/tdfusion_brats.py)
            idx = np.linspace(0, len(data["a"]) - 1, args.eval_slices).round().astype(int)
            record["train_slice_dice"] = {
                k: (round(v, 4) if math.isfinite(v) else None)  # None: class absent from these slices
                for k, v in dice_on_slices(runner, data["a"][idx], data["b"][idx], data["labels"][idx], 5).items()
            }
        return run.end(runner, trainer, sampler)


def _parse_config(text: str | None) -> dict[str, Any]:
    """``"down=2,dec_blocks=2"`` -> ``{"down": 2, "dec_blocks": 2}`` (ints, floats)."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"--fusion-config: {part!r} is not KEY=VALUE")
        out[key.strip()] = float(val) if "." in val else int(val)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = scaffold.new_parser("napari_fusion.training.tdfusion", __doc__)
    ap.add_argument("--task", choices=("brats", "ivif"), required=True)
    ap.add_argument("--data", default="auto", help="'auto' (../shared/data), a packed .npz or a folder")
    scaffold.add_run_arguments(ap, steps=2000, batch=(16, 4), crop=(192, 96))
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the fusion net and the segmenter")
    ap.add_argument("--lr-loss", type=float, default=1e-3, help="Adam lr of the loss generation module")
    ap.add_argument("--inner-lr", type=float, default=1e-2, help="SGD lr of the inner (virtual) fusion step")
    ap.add_argument("--grad-weight", type=float, default=1.0)
    ap.add_argument("--meta-every", type=int, default=1)
    ap.add_argument("--meta-start", type=int, default=100, help="first step with a meta update")
    ap.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    ap.add_argument("--intensity", choices=("l1", "l2"), default="l1",
                    help="intensity term: l1 (weighted median: keeps each source's contrast) or l2 (blend; older files)")
    ap.add_argument("--max-weight", type=float, default=0.0,
                    help="weight of a fixed l1 term towards max(A, B) beside the learned one (lifts contrast)")
    ap.add_argument("--meta-mode", choices=("image", "params"), default="image",
                    help="inner step of the meta update on the fused image (image) or on the fusion net (params)")
    ap.add_argument("--image-step", type=float, default=0.05, help="mean intensity change of the image-space inner step")
    ap.add_argument("--seg-repeats", type=int, default=1, help="segmenter updates per step on the same fused batch")
    ap.add_argument("--fusion-config", default="down=2,dec_blocks=2",
                    help="FusionNet arguments for a new model, KEY=VALUE,... ('' = the older full-resolution net)")
    ap.add_argument("--loss-config", default="",
                    help="LossNet arguments for a new model, KEY=VALUE,... ('' = dim 16, 1 + 3 blocks)")
    ap.add_argument("--object-fraction", type=float, default=0.5,
                    help="ivif with boxes: share of crops centred near an object (the rest uniform)")
    ap.add_argument("--freeze-fusion", action="store_true",
                    help="train only the task network (e.g. a last phase on the final fused images; use with --meta-every 0)")
    ap.add_argument("--no-labels", dest="labels", action="store_false",
                    help="ivif: ignore the MSRS boxes (fusion loss only, loss module neutral)")
    ap.add_argument("--eval-slices", type=int, default=24, help="full training slices for the final Dice report (brats)")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return scaffold.run_main(build_parser(), train, argv)


if __name__ == "__main__":
    torch.set_flush_denormal(True)  # tiny second-order terms of the meta step must not hit slow denormal paths
    main()
