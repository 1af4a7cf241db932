"""Train MultiTaskVIF: one network, fusion and segmentation learned jointly end to end.

Joint loss of one batch (weights are :class:`MultiTaskConfig` fields, CLI flags in brackets)::

    L = fusion_weight * (int_weight * L_int + grad_weight * L_grad) + seg_weight * (L_ce + dice_weight * L_dice)

- ``L_int = mean |F - max(A, B)|``: the fused image keeps the brighter source at every pixel (for
  FLAIR + T1c: oedema bright in FLAIR, enhancing rim bright in T1c) [--int-weight, default 1];
- ``L_grad = mean | |grad F| - max(|grad A|, |grad B|) |`` (Sobel, :func:`.losses.gradient_loss`): the
  fused image keeps the stronger edge of the two [--grad-weight, default 4: the normalised Sobel
  magnitudes are about a quarter of the intensities' scale];
- ``fusion_weight`` [--fusion-weight, default 5] balances the fusion terms (~0.05 after a few hundred
  steps) against the segmentation terms (~0.5) in the shared encoder and decoder;
- ``L_ce``: cross-entropy with inverse-square-root-frequency class weights (tumour classes are ~1 % of
  the pixels; :func:`.losses.class_weights_from_counts`) and an ``ignore_index`` (unlabelled /
  unpainted pixels contribute nothing);
- ``L_dice``: soft Dice loss averaged over the foreground classes 1..C-1 (labelled pixels only), which
  does not care how rare a class is [--dice-weight, default 1].

Command line (JSON-lines logs, atomic checkpoints, resume, time budget, seeded and reproducible on
CPU: :mod:`.scaffold`)::

    python -m napari_fusion.training.multitask --data auto --out multitaskvif_brats.safetensors \\
        --device auto --steps 20000 --time-budget 3600 --seed 0

Defaults: batch 32 of 160-pixel crops on a GPU, 4 of 96 on CPU; AdamW, lr 2e-3 with a 50-step
warm-up and a cosine decay to 5 % at ``--steps`` or at the end of ``--time-budget``, whichever comes
first (a budget-stopped run still ends with a small learning rate; the budget is this run's own, a
``--resume`` starts a new one). A run whose budget does not bind
(``--time-budget 0``) is bitwise reproducible on CPU for a given seed and thread count, and
``--resume`` continues it exactly (optimiser, step and random states are in ``OUT.resume.pt``).

``--task brats`` (default, method ``multitaskvif``): ``--data auto`` reads the BraTS train + validation
cases from ``../shared/data`` (the test cases are held out for measurement); ``--data PACKED.npz`` reads
``a``, ``b`` (uint8 or float in [0, 1]) and ``labels`` as written by ``python -m napari_fusion.training.pack``.
The model records the BraTS ``input_intensity`` (how its training slices were scaled).

``--task ivif`` (method ``multitaskvif-ivif``, classes background / person / bicycle / car of
:data:`napari_fusion.methods.classes.IVIF_CLASSES`; A = infrared, B = visible gray): ``--data auto``
reads the MSRS + RoadScene training split with the MSRS object boxes (``boxes/fusion``) as weak pixel
labels (inside a box its class, outside every box background, a 4-pixel ring around each box
ignored; RoadScene pairs have no labels and teach only the fusion path); ``--data PACKED.npz`` reads
``a_0, b_0, a_1, ...`` with optional ``l_0, l_1, ...`` label images. ``--object-fraction`` of the crops
are centred near an object. The crops are the 8-bit images / 255, which is the engine's default
mapping of 8-bit sources, so the model records no ``input_intensity``. Example (the shipped file)::

    python -m napari_fusion.training.multitask --task ivif --data auto --out multitaskvif_ivif.safetensors \
        --device cpu --threads 1 --batch 8 --crop 96 --steps 100000 --time-budget 2400 --ckpt-every 100

Fine-tuning from painted labels (:mod:`.finetune_multitask`) uses the same joint loss with the
segmentation terms on painted pixels only; ``napari_fusion.training.finetune.finetune_steps`` hands
MultiTaskVIF models to it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import scaffold
from .losses import IGNORE_INDEX, class_weights_from_counts, gradient_loss

__all__ = [
    "MultiTaskConfig",
    "MultiTaskTrainer",
    "intensity_loss_max",
    "multitask_fusion_loss",
    "soft_dice_loss",
    "segmentation_loss",
    "joint_loss",
    "prior_adjustment",
    "apply_prior_adjustment",
    "train",
    "build_parser",
    "main",
]


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def intensity_loss_max(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean |F - max(A, B)|``: follow the brighter source at every pixel."""
    return (fused - torch.maximum(a, b)).abs().mean()


def multitask_fusion_loss(
    fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, int_weight: float = 1.0, grad_weight: float = 4.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``int_weight * L_int + grad_weight * L_grad`` and its parts ``{"int", "grad"}``."""
    li = intensity_loss_max(fused, a, b)
    lg = gradient_loss(fused, a, b)
    return int_weight * li + grad_weight * lg, {"int": li, "grad": lg}


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_c Dice_c`` over foreground classes 1..C-1 of softmax probabilities, labelled pixels only.

    Sums run over the whole batch; ``smooth`` keeps classes absent from the batch well defined (their
    loss then only asks for low probabilities). 0 (with a graph) when nothing is labelled or C == 1.
    """
    n = logits.shape[1]
    valid = labels != ignore_index
    if n < 2 or not bool(valid.any()):
        return logits.sum() * 0.0
    prob = torch.softmax(logits.float(), 1)[:, 1:]
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), n).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    m = valid[:, None].to(prob.dtype)
    prob, onehot = prob * m, onehot * m
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted cross-entropy + ``dice_weight`` * soft Dice; ``ignore_index`` pixels contribute nothing.

    Raises ValueError for labels outside ``0..C-1`` (other than ``ignore_index``).
    """
    from .losses import task_loss

    ce = task_loss(logits.float(), labels, ignore_index, class_weights)
    dice = soft_dice_loss(logits, labels, ignore_index) if dice_weight else ce.new_zeros(())
    return ce + dice_weight * dice, {"ce": ce, "dice": dice}


@dataclass
class MultiTaskConfig:
    """Hyper-parameters of the joint training (CLI flags map onto these)."""

    lr: float = 2e-3
    weight_decay: float = 1e-4
    fusion_weight: float = 5.0
    int_weight: float = 1.0
    grad_weight: float = 4.0
    seg_weight: float = 1.0
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    ignore_index: int = IGNORE_INDEX
    amp: bool = False
    warmup: int = 50  # linear learning-rate warm-up steps
    trunk_lr_scale: float = 1.0  # learning-rate factor of the shared encoder/decoder (the two paths get 1)
    total_steps: int = 0  # > 0: cosine decay to 5 % over these steps

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def joint_loss(
    fused: torch.Tensor,
    logits: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    config: MultiTaskConfig,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint loss of one batch and its parts as floats (``fusion``, ``int``, ``grad``, ``seg``, ``ce``, ``dice``)."""
    c = config
    lf, fparts = multitask_fusion_loss(fused.float(), a, b, c.int_weight, c.grad_weight)
    total = c.fusion_weight * lf
    parts = {"fusion": float(lf.detach()), "int": float(fparts["int"].detach()), "grad": float(fparts["grad"].detach())}
    if labels is not None:
        ls, sparts = segmentation_loss(
            logits, labels, class_weights=class_weights, dice_weight=c.dice_weight, ignore_index=c.ignore_index
        )
        total = total + c.seg_weight * ls
        parts |= {"seg": float(ls.detach()), "ce": float(sparts["ce"].detach()), "dice": float(sparts["dice"].detach())}
    parts["total"] = float(total.detach())
    return total, parts


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class MultiTaskTrainer:
    """Joint optimisation of a :class:`~napari_fusion.methods.multitask.MultiTaskRunner`'s network, in place.

    AdamW with a linear warm-up (and a cosine decay when ``config.total_steps`` is set), on a
    :class:`~torch.optim.lr_scheduler.LambdaLR` (:func:`.scaffold.lr_schedule`).
    """

    def __init__(self, runner, config: MultiTaskConfig | None = None, device: str | torch.device | None = None):
        from ..methods.torch_runner import resolve_torch_device

        self.runner = runner
        self.config = c = config or MultiTaskConfig()
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        self.net = runner.net
        if self.device.type == "cpu":  # plain layout trains faster on CPU; channels-last on GPUs
            self.net.to(memory_format=torch.contiguous_format)
        heads = ("fuse_", "seg_")
        trunk = [p for n, p in self.net.named_parameters() if not n.startswith(heads)]
        paths = [p for n, p in self.net.named_parameters() if n.startswith(heads)]
        self.opt = torch.optim.AdamW(
            [{"params": trunk, "lr": c.lr * float(c.trunk_lr_scale)}, {"params": paths}], lr=c.lr, weight_decay=c.weight_decay,
        )
        cw = c.class_weights
        self.class_weights = torch.tensor(cw, dtype=torch.float32, device=self.device) if cw else None
        self.step = 0
        self.time_fraction: Callable[[], float] = lambda: 0.0  # share of a time budget spent (the run sets it)
        self.sched = scaffold.lr_schedule(self.opt, self.lr_factor)
        self.last_lr: float | None = None

    def lr_factor(self, step: int, time_fraction: float | None = None) -> float:
        """Learning rate of a step as a share of ``config.lr``: linear warm-up, then constant or
        cosine-decayed to 5 %.

        The cosine runs over ``config.total_steps``, or faster when ``time_fraction`` (the share of
        a time budget already spent; default: :attr:`time_fraction`) is further along, so a run
        stopped by its budget still ends with a decayed learning rate.
        """
        c = self.config
        f = min(1.0, (step + 1) / max(c.warmup, 1))
        if c.total_steps > 0 and step >= c.warmup:
            tf = self.time_fraction() if time_fraction is None else float(time_fraction)
            f *= scaffold.cosine(max((step - c.warmup) / max(c.total_steps - c.warmup, 1), tf))
        return f

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Learning rate of a step (of the segmentation and fusion paths; the trunk's is scaled)."""
        return self.config.lr * self.lr_factor(step, time_fraction)

    def train_step(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """One joint step on a batch ``(N,1,h,w)`` x2 and ``(N,h,w)`` labels; returns the losses."""
        self.net.train()
        a = a.to(self.device, non_blocking=True)
        b = b.to(self.device, non_blocking=True)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True).long()
        if self.device.type == "cuda":
            a = a.contiguous(memory_format=torch.channels_last)
            b = b.contiguous(memory_format=torch.channels_last)
        with scaffold.autocast(self.device, self.config.amp):
            fused, logits = self.net(a, b)
        loss, parts = joint_loss(fused, logits, a, b, labels, self.config, self.class_weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if labels is not None:
            with torch.no_grad():
                valid = labels != self.config.ignore_index
                parts["acc"] = float((logits.argmax(1)[valid] == labels[valid]).float().mean()) if bool(valid.any()) else float("nan")
        parts["step"] = self.step
        self.last_lr = self.sched.get_last_lr()[-1]
        self.step += 1
        self.sched.step()
        return parts

    def finish(self):
        """Back to inference mode and the runner's layout; returns the runner."""
        self.runner.to(self.device)
        self.net.eval()
        return self.runner

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Step and optimiser moments of an earlier run; the schedule continues from that step at
        this trainer's rates."""
        self.step = int(state["step"])
        self.opt.load_state_dict(state["opt"])
        self.sched = scaffold.lr_schedule(self.opt, self.lr_factor, self.step, self.sched.base_lrs)


# --------------------------------------------------------------------------------------------
# after training: the class prior of whole images
# --------------------------------------------------------------------------------------------
def prior_adjustment(image_counts, seen_counts, class_weights=None, strength: float = 1.0) -> np.ndarray:
    """Logit offsets that move a model trained on re-balanced crops to the class prior of whole images.

    A classifier trained with cross-entropy on crops whose labelled pixels have class frequencies
    ``seen`` and class weights ``w`` learns posteriors with the prior ``w * seen``; on whole images
    the prior is ``image`` (post-hoc logit adjustment, Menon et al. 2021). The offsets
    ``strength * (log image - log(w * seen))``, shifted so that class 0 gets 0, are added to the
    segmentation bias. ``strength`` 0: no change, 1: the full Bayes correction.
    """
    img = np.asarray(image_counts, np.float64).clip(min=1.0)
    seen = np.asarray(seen_counts, np.float64).clip(min=1.0)
    w = np.ones_like(img) if class_weights is None else np.asarray(class_weights, np.float64)
    if not (img.shape == seen.shape == w.shape):
        raise ValueError(f"class counts {img.shape}, {seen.shape} and weights {w.shape} differ in length")
    d = np.log(img / img.sum()) - np.log(w * seen / seen.sum())
    return float(strength) * (d - d[0])


@torch.no_grad()
def apply_prior_adjustment(runner, image_counts, seen_counts, class_weights=None, strength: float = 1.0) -> np.ndarray:
    """Add :func:`prior_adjustment` to the runner's segmentation bias (in place) and record it in
    ``runner.meta["prior_adjustment"]``; an earlier recorded adjustment is undone first. Returns the offsets."""
    net = runner.net
    prev = (runner.meta.get("prior_adjustment") or {}).get("offsets")
    if prev is not None:
        net.seg_out.bias -= torch.tensor(prev, dtype=net.seg_out.bias.dtype, device=net.seg_out.bias.device)
    d = prior_adjustment(image_counts, seen_counts, class_weights, strength)
    if len(d) != net.n_classes:
        raise ValueError(f"{len(d)} class counts for a model with {net.n_classes} classes")
    net.seg_out.bias += torch.tensor(d, dtype=net.seg_out.bias.dtype, device=net.seg_out.bias.device)
    runner.meta["prior_adjustment"] = {
        "strength": float(strength),
        "offsets": [round(float(x), 6) for x in d],
        "image_class_pixels": [int(x) for x in image_counts],
        "seen_class_pixels": [int(x) for x in seen_counts],
        "class_weights": None if class_weights is None else [float(x) for x in class_weights],
    }
    return d


# --------------------------------------------------------------------------------------------
# the training loop (CLI)
# --------------------------------------------------------------------------------------------
def _ivif_data(data: dict[str, Any], n_classes: int) -> tuple[list, list]:
    """Pairs and label images (None for unlabelled pairs) of ivif training data; checks label values."""
    pairs = list(data["pairs"])
    labels = data.get("labels")
    if labels is None or not any(lab is not None for lab in labels):
        raise ValueError(
            f"ivif training data {data['source']} holds no label images; MultiTaskVIF needs labels for its "
            "segmentation path (MSRS box files under boxes/fusion, or l_0, l_1, ... in a packed .npz)"
        )
    labels = [None if lab is None else np.asarray(lab).astype(np.int64) for lab in labels]
    for i, lab in enumerate(labels):
        if lab is None:
            continue
        v = lab[lab != IGNORE_INDEX]
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"ivif training pair {i}: labels hold values {v.min()}..{v.max()}; classes are 0..{n_classes - 1}")
    return pairs, labels


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record (also stored in the model file)."""
    from ..methods.classes import BRATS_CLASSES, BRATS_INPUT_INTENSITY, IVIF_CLASSES
    from ..methods.multitask import load_runner, new_runner
    from .data import load_training_data
    from .samplers import BratsSampler, PairSampler

    with scaffold.torch_run(args) as device:
        data = load_training_data(args.task, args.data)
        classes = IVIF_CLASSES if args.task == "ivif" else BRATS_CLASSES
        n_classes = len(classes)
        if args.task == "ivif":
            pairs, labels = _ivif_data(data, n_classes)
            sampler = PairSampler(pairs, args.crop, seed=args.seed, labels=labels, object_fraction=args.object_fraction)
        else:
            labels = data["labels"].astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
                raise ValueError(f"training labels hold values {labels.min()}..{labels.max()}; BraTS classes are 0..{n_classes - 1}")
            sampler = BratsSampler(data["a"], data["b"], labels, args.crop, seed=args.seed, tumour_fraction=args.tumour_fraction,
                                   intensity_jitter=args.intensity_jitter)
        cw = class_weights_from_counts(sampler.class_counts(n_classes)).tolist() if args.class_weights else None
        cfg = MultiTaskConfig(
            lr=args.lr, weight_decay=args.weight_decay, fusion_weight=args.fusion_weight, int_weight=args.int_weight,
            grad_weight=args.grad_weight, seg_weight=args.seg_weight, dice_weight=args.dice_weight, class_weights=cw,
            amp=args.amp, warmup=args.warmup, total_steps=args.steps if args.cosine else 0,
        )
        run = scaffold.Run(args, log)
        run.record |= {"task": args.task, "data": data["source"], "seed": args.seed, "device": str(device), "batch": args.batch,
                       "crop": args.crop, "config": cfg.to_dict(), "torch": torch.__version__}
        if args.task == "ivif":
            run.record |= {"pairs": len(pairs), "labelled_pairs": sum(lab is not None for lab in labels),
                           "class_pixels": [int(x) for x in sampler.class_counts(n_classes)], "object_fraction": args.object_fraction}
        else:
            run.record["slices"] = int(len(labels))
        if args.resume:
            runner = load_runner(args.resume, device=device)
            prev_adj = (runner.meta.pop("prior_adjustment", None) or {}).get("offsets")
            if prev_adj is not None:  # train the plain logits; the adjustment is made again at the end
                with torch.no_grad():
                    runner.net.seg_out.bias -= torch.tensor(prev_adj, dtype=runner.net.seg_out.bias.dtype)
            if runner.n_classes != n_classes:
                raise ValueError(f"{args.resume} has {runner.n_classes} classes; --task {args.task} trains {n_classes}")
        else:
            runner = new_runner(classes, seed=args.seed, device=device)
        trainer = MultiTaskTrainer(runner, cfg, device)
        run.start(trainer, sampler)
        runner.meta["method"] = "multitaskvif-ivif" if args.task == "ivif" else "multitaskvif"
        if args.task == "brats":
            runner.meta["input_intensity"] = dict(BRATS_INPUT_INTENSITY)  # how the training slices were scaled
        else:  # 8-bit images / 255: the engine's default mapping of 8-bit sources, nothing to record
            runner.meta.pop("input_intensity", None)

        seen = np.zeros(n_classes, np.int64)  # labelled pixels per class in the crops this run trained on

        def step() -> dict[str, float]:
            a, b, lab = sampler.batch(args.batch)
            if lab is not None:
                seen[:] += np.bincount(lab[lab >= 0].numpy(), minlength=n_classes)[:n_classes]
            return trainer.train_step(a, b, lab)

        record = run.train(runner, trainer, sampler, step)
        record["seen_class_pixels"] = [int(x) for x in seen]
        trainer.finish()
        if args.prior_adjust and seen.sum():
            d = apply_prior_adjustment(runner, sampler.class_counts(n_classes), seen, cw, args.prior_adjust)
            record["prior_adjustment"] = {"strength": args.prior_adjust, "offsets": [round(float(x), 4) for x in d]}
        if args.eval_slices:
            record |= _dice_report(runner, args, data, sampler, pairs if args.task == "ivif" else None, labels, n_classes)
        return run.end(runner, trainer, sampler)


def _dice_report(runner, args, data, sampler, pairs, labels, n_classes: int) -> dict[str, Any]:
    """Dice on a few whole labelled training pairs with objects (ivif) or training slices with tumour
    (brats); the test split is for measurement."""
    from .evaluate import dice_on_pairs, dice_on_slices

    def spread(pool) -> list:
        return [pool[int(j)] for j in np.linspace(0, len(pool) - 1, min(args.eval_slices, len(pool))).round().astype(int)]

    if args.task == "ivif":
        idx = spread(list(sampler.object_pairs)) if sampler.object_pairs else []
        if not idx:
            return {}
        dice, key = dice_on_pairs(runner, [pairs[i] for i in idx], [labels[i] for i in idx], n_classes), "train_pair_dice"
    else:
        tum = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))
        idx = np.asarray(spread(tum if len(tum) else np.arange(len(labels))))
        dice, key = dice_on_slices(runner, data["a"][idx], data["b"][idx], labels[idx], n_classes), "train_slice_dice"
    return {key: {k: (round(v, 4) if math.isfinite(v) else None) for k, v in dice.items()}}


def build_parser() -> argparse.ArgumentParser:
    ap = scaffold.new_parser("napari_fusion.training.multitask", __doc__)
    ap.add_argument("--task", choices=("brats", "ivif"), default="brats",
                    help="brats: FLAIR + T1c tumour classes (method multitaskvif); ivif: infrared + visible with MSRS "
                         "object boxes as weak labels (method multitaskvif-ivif)")
    ap.add_argument("--data", default="auto",
                    help="'auto' (../shared/data: BraTS train+validation, or the MSRS+RoadScene training split for ivif), "
                         "a packed .npz or a folder")
    scaffold.add_run_arguments(ap, steps=4000, batch=(32, 4), crop=(160, 96))
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    ap.add_argument(
        "--cosine", action=argparse.BooleanOptionalAction, default=True,
        help="cosine decay to 5%% at --steps, or at the end of --time-budget when that comes first",
    )
    ap.add_argument("--fusion-weight", type=float, default=5.0, help="weight of the fusion loss in the joint loss")
    ap.add_argument("--int-weight", type=float, default=1.0, help="weight of |F - max(A,B)| in the fusion loss")
    ap.add_argument("--grad-weight", type=float, default=4.0, help="weight of the max-gradient term in the fusion loss")
    ap.add_argument("--seg-weight", type=float, default=1.0, help="weight of the segmentation loss in the joint loss")
    ap.add_argument("--dice-weight", type=float, default=1.0, help="weight of soft Dice next to cross-entropy")
    ap.add_argument("--tumour-fraction", type=float, default=0.6, help="brats: share of crops centred on a tumour pixel")
    ap.add_argument("--object-fraction", type=float, default=0.5, help="ivif: share of crops centred near an object box")
    ap.add_argument("--intensity-jitter", type=float, default=0.0,
                    help="probability that a crop's source is remapped as a single slice scaled on its own is (0: never)")
    ap.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    ap.add_argument("--prior-adjust", type=float, default=0.0,
                    help="after training, shift the segmentation logits by this share (0..1) of log(image class prior) "
                         "- log(class weights x class frequencies of the training crops): object-centred crops and "
                         "class weights otherwise make the model label far too many object pixels on whole images "
                         "(0: off)")
    ap.add_argument("--eval-slices", type=int, default=24,
                    help="training slices with tumour (ivif: whole training pairs with objects) for the final Dice report")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return scaffold.run_main(build_parser(), train, argv)


if __name__ == "__main__":
    main()
