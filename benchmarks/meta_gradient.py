"""The signal of TDFusion's meta step, and what the learned loss module says.

Part 1 (signal): on real MSRS train batches (weak box labels), one meta step of TDFusion's loss
module in each formulation of ``napari_fusion.training.tdfusion.meta_step``:

- ``params``: the paper's inner SGD step on the fusion net's parameters (``inner_lr`` 1e-2 as the
  earlier files were trained, and 1e-1),
- ``image``: the inner step on the fused image (what the shipped ``tdfusion`` is trained with),

and with the graph cut (``create_graph=False``: must give exactly 0). For each: the gradient norm
reaching the loss module, and how consistent its direction is across independent batches (mean
pairwise cosine; a gradient that is mostly noise has cosines near 0, and Adam then moves the module
by noise). The models are the ``--model`` file's (a trained segmenter, so the task loss is meaningful).

Part 2 (figure): the learned per-pixel weights of the infrared source on held-out pairs
(``TDFusionRunner.intensity_weights``): ``docs/images/tdfusion_weights.png``.

    python benchmarks/meta_gradient.py --threads 1 --batches 6
writes docs/results/meta_gradient.md.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from _common import REPO, RESULTS, environment, markdown_table, print_flush, write_text

FIGURE = REPO / "docs" / "images" / "tdfusion_weights.png"


def grads(runner, batches, mode: str, inner_lr: float, create_graph: bool = True) -> tuple[list[np.ndarray], float]:
    from napari_fusion.training.tdfusion import meta_step

    cfg = (runner.meta.get("training") or {}).get("config") or {}
    intensity = cfg.get("intensity", "l2")
    out, t = [], 0.0
    for a, b, lab in batches:
        t0 = time.perf_counter()
        meta_step(runner.fusion, runner.loss_net, runner.segmenter, a, b, lab, None, mode=mode, inner_lr=inner_lr,
                  intensity=intensity, create_graph=create_graph)
        t += time.perf_counter() - t0
        out.append(np.concatenate([p.grad.detach().ravel().numpy() for p in runner.loss_net.parameters()]))
    return out, t / max(len(batches), 1)


def consistency(gs: list[np.ndarray]) -> float:
    cos = []
    for g, h in itertools.combinations(gs, 2):
        n = np.linalg.norm(g) * np.linalg.norm(h)
        if n > 0:
            cos.append(float(g @ h / n))
    return float(np.mean(cos)) if cos else float("nan")


def part_signal(runner, args) -> str:
    from napari_fusion.training.data import load_training_data
    from napari_fusion.training.samplers import PairSampler

    data = load_training_data("ivif", "auto")
    keep = [i for i, lab in enumerate(data["labels"]) if lab is not None]
    sampler = PairSampler([data["pairs"][i] for i in keep], args.crop, seed=123, labels=[data["labels"][i] for i in keep])
    batches = [sampler.batch(args.batch) for _ in range(args.batches)]
    for m in runner.modules.values():
        m.train()
        m.to(memory_format=torch.contiguous_format)
    rows = []
    for label, mode, lr, graph in (("params, inner lr 1e-2", "params", 1e-2, True), ("params, inner lr 1e-1", "params", 1e-1, True),
                                   ("image (shipped)", "image", 0.0, True), ("image, graph cut", "image", 0.0, False)):
        gs, secs = grads(runner, batches, mode, lr, graph)
        norms = [float(np.linalg.norm(g)) for g in gs]
        mean_g = np.mean(gs, axis=0)
        rows.append([label, float(np.median(norms)), consistency(gs), float(np.linalg.norm(mean_g) / max(np.mean(norms), 1e-30)), secs])
        print_flush(f"{label}: |g| {rows[-1][1]:.3g}, cosine {rows[-1][2]:.3f}, {secs:.2f} s")
    return markdown_table(["meta step", "median gradient norm", "mean pairwise cosine", "|mean g| / mean |g|", "s per step"], rows,
                          digits=[0, 6, 3, 3, 2])


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(x, 0, 1)[..., None], 3, axis=-1)


def _weight_rgb(w: np.ndarray) -> np.ndarray:
    """Infrared weight as colour: red = follow infrared, blue = follow visible, gray-purple = equal."""
    return np.stack([w, 0.15 + 0.0 * w, 1.0 - w], axis=-1).clip(0, 1)


def part_figure(runner, args) -> str:
    from skimage import io as skio

    from napari_fusion.color import rgb_to_ycbcr
    from napari_fusion.io.atomic import atomic_path
    from napari_fusion.training.data import pair_split, shared_data_dir
    from napari_fusion.training.data import box_labels

    root = shared_data_dir() / "ivif" / "MSRS"
    test = sorted(n for n, p in pair_split(root / "ir").items() if p == "test")
    night = [n for n in test if Path(n).stem.endswith("N")]
    day = [n for n in test if not Path(n).stem.endswith("N")]
    picks = args.pairs or (night[:2] + day[:1])
    for m in runner.modules.values():
        m.eval()
    rows, lines = [], []
    for name in picks:
        ir = skio.imread(str(root / "ir" / name)).astype(np.float32) / 255.0
        vi = skio.imread(str(root / "vi" / name)).astype(np.float32) / 255.0
        ir = ir if ir.ndim == 2 else rgb_to_ycbcr(ir[..., :3])[..., 0]
        vy = vi if vi.ndim == 2 else rgb_to_ycbcr(vi[..., :3])[..., 0]
        w = runner.intensity_weights(ir, vy)[0]
        fused = runner.fuse(ir, vy)
        lab = box_labels(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), ir.shape)
        person, car, bg = lab == 1, lab == 3, lab == 0
        mean = lambda m: float(w[m].mean()) if m.any() else float("nan")  # noqa: E731
        lines.append([name, mean(person), mean(car), mean(bg)])
        gap = np.ones((ir.shape[0], 8, 3), np.float32)
        rows.append(np.concatenate([_rgb(ir), gap, _rgb(vy), gap, _weight_rgb(w), gap, _rgb(fused)], axis=1)[::2, ::2])
    sep = np.ones((6, rows[0].shape[1], 3), np.float32)
    mosaic = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(FIGURE) as tmp:
        skio.imsave(str(tmp), (mosaic * 255).round().astype(np.uint8), check_contrast=False, extension=".png")
    return markdown_table(["pair", "mean infrared weight on people", "on cars", "on background"], lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="TDFusion model file (default: the shipped tdfusion)")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--pairs", nargs="*", default=None, help="MSRS test pairs for the figure")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from napari_fusion.methods.registry import WEIGHTS_DIR, get_method
    from napari_fusion.methods.tdfusion import load_runner

    path = Path(args.model) if args.model else WEIGHTS_DIR / get_method("tdfusion").weights
    runner = load_runner(path)
    if runner.segmenter is None:
        raise SystemExit(f"{path} has no segmenter: the meta step needs the task network")
    signal = part_signal(runner, args)
    figure = part_figure(load_runner(path), args)
    text = (
        "# TDFusion's meta step: signal reaching the loss module, and what it learned\n\n"
        f"Measured {environment('cpu')}; model `{path.name}`; `python benchmarks/meta_gradient.py --batches {args.batches}`.\n\n"
        f"## Signal ({args.batches} real MSRS train batches of {args.batch} crops of {args.crop} px, weak box labels)\n\n"
        "`params`: the paper's inner SGD step on the fusion net's parameters; `image`: the inner step on the fused "
        "image (what the shipped model was trained with). Median norm of the gradient reaching the loss module, how "
        "consistent its direction is between independent batches (mean pairwise cosine; noise gives ~0), and the "
        "share of it that survives averaging over the batches. Cutting the bi-level graph must give exactly 0.\n\n"
        + signal
        + "\n\n## Learned infrared weights on held-out pairs\n\n"
        "Columns: infrared, visible (Y), the loss module's infrared weight (red: follow infrared, blue: follow "
        "visible), the fused image; rows: " + ", ".join(args.pairs or ["two night and one day test pair"]) + ".\n\n"
        "![infrared, visible, learned infrared weight, fused](../images/tdfusion_weights.png)\n\n"
        + figure + "\n"
    )
    print_flush(text)
    if not args.no_write:
        write_text(RESULTS / "meta_gradient.md", text)


if __name__ == "__main__":
    main()
