"""Shared helpers for runners backed by torch modules (TDFusion, GIFNet, MultiTaskVIF).

A runner receives two 2-D float32 unit images; the network wants (1, 1, H, W) tensors whose size is a
multiple of its down-sampling factor. :class:`TorchRunner` does that plumbing once: checks the pair,
moves it to the runner's device, pads by reflection to ``pad_multiple``, runs the network under
``torch.inference_mode()``, crops back and returns float32 NumPy clipped to [0, 1].
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .runner import Runner

__all__ = [
    "TorchRunner",
    "SingleNetRunner",
    "sub_state",
    "count_parameters",
    "check_pair",
    "to_tensor",
    "pad_to_multiple",
    "crop_to",
    "resolve_torch_device",
]


def count_parameters(module: nn.Module | Iterable[nn.Module]) -> int:
    """Number of scalar parameters of a module (or of several, without double counting)."""
    mods = [module] if isinstance(module, nn.Module) else list(module)
    seen: set[int] = set()
    n = 0
    for m in mods:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


def resolve_torch_device(device: str | torch.device | None) -> torch.device:
    """A torch device from a name; ``"auto"``/None picks CUDA, then MPS, then CPU.

    Uses the engine's resolver when it exists (it honours ``NAPARI_FUSION_DEVICE``).
    """
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device)
    if name == "auto":
        try:
            from ..engine.device import resolve_device

            name = resolve_device("auto")
        except ImportError:
            if torch.cuda.is_available():
                name = "cuda"
            elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                name = "mps"
            else:
                name = "cpu"
    return torch.device(name)


def check_pair(a: np.ndarray, b: np.ndarray, names: Sequence[str] = ("source A", "source B")) -> tuple[np.ndarray, np.ndarray]:
    """Validate a runner's input pair: 2-D, one shape, finite. Returns float32 copies-if-needed."""
    a = np.asarray(a)
    b = np.asarray(b)
    for x, n in ((a, names[0]), (b, names[1])):
        if x.ndim != 2:
            raise ValueError(f"{n} must be a 2-D single-channel image, got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"{n} is empty (shape {x.shape})")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[1]} is {b.shape[0]}x{b.shape[1]} but {names[0]} is {a.shape[0]}x{a.shape[1]}; "
            "a runner needs both sources on one grid (resample first)"
        )
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    for x, n in ((a, names[0]), (b, names[1])):
        if not np.all(np.isfinite(x)):
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise ValueError(f"{n} contains {bad} NaN/inf value(s); fusion needs finite intensities")
    return a, b


def to_tensor(x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) array -> (1, 1, H, W) float32 tensor on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.reshape(1, 1, *t.shape[-2:]).to(device)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims (bottom/right) up to a multiple; returns the tensor and the original (H, W).

    Reflection needs the pad to be smaller than the side, so tiny inputs are reflected repeatedly
    (a 3-pixel image padded to 16 still gets mirrored content, not zeros).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    m = max(int(multiple), 1)
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode != "reflect":
        return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)
    while ph > 0 or pw > 0:
        ch, cw = int(x.shape[-2]), int(x.shape[-1])
        sh = min(ph, ch - 1) if ch > 1 else 0
        sw = min(pw, cw - 1) if cw > 1 else 0
        if sh == 0 and sw == 0:  # a 1-pixel side cannot be reflected: repeat it
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            break
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x, (h, w)


def crop_to(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dims back to ``hw`` (the size before :func:`pad_to_multiple`)."""
    return x[..., : hw[0], : hw[1]]


class TorchRunner(Runner):
    """Base class for runners whose fusion is a torch network (a :class:`~.runner.Runner`).

    Subclasses set ``self.modules`` (name -> ``nn.Module``) and implement :meth:`forward_fused`
    (``(1,1,H,W)`` padded tensors -> fused ``(1,1,H,W)`` tensor in [0, 1]). ``pad_multiple`` is the
    network's down-sampling factor; 1 for purely convolutional nets.
    """

    pad_multiple: int = 1
    family: str = "torch"
    #: run convolutions in channels-last layout (about 2x faster for depthwise convs on CPU)
    channels_last: bool = False
    #: tile side that runs fastest per pixel on the CPU (activations that stay in cache); the engine
    #: splits larger planes into such tiles. None: no preference (one pass up to the memory limit).
    cpu_tile: int | None = None
    #: halo'd tiles give the untiled result exactly (the halo covers the receptive field), so the
    #: engine's automatic tiles need no blended overlap
    tiles_exact: bool = False

    def __init__(self, modules: dict[str, nn.Module] | nn.Module, device: str | torch.device = "cpu", pad_multiple: int | None = None):
        if isinstance(modules, nn.Module):
            modules = {"net": modules}
        self.modules: dict[str, nn.Module] = dict(modules)
        if pad_multiple is not None:
            self.pad_multiple = int(pad_multiple)
        self._device = resolve_torch_device(device)
        for m in self.modules.values():
            m.to(self._device).eval()
            if self.channels_last:
                m.to(memory_format=torch.channels_last)

    # --- device / size -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> "TorchRunner":
        """Move every module to ``device`` (in place); returns self."""
        self._device = resolve_torch_device(device)
        for m in self.modules.values():
            m.to(self._device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        return self

    @property
    def preferred_tile(self) -> int | None:
        """The tile side the engine should use on this runner's current device, or None."""
        return self.cpu_tile if self._device.type == "cpu" else None

    @property
    def n_parameters(self) -> int:
        """Scalar parameters of all the runner's modules."""
        return count_parameters(self.modules.values())

    def copy(self) -> "TorchRunner":
        """An independent deep copy (training or fine-tuning a copy leaves this runner unchanged)."""
        new = copy.copy(self)
        new.modules = {k: copy.deepcopy(m) for k, m in self.modules.items()}
        new.meta = copy.deepcopy(self.meta)
        if "classes" in self.__dict__:
            new.classes = tuple(self.classes)
        return new

    def module_tensors(self) -> dict[str, torch.Tensor]:
        """Every module's state as CPU tensors named ``"<module>.<parameter>"`` (a model file's tensors)."""
        return {
            f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone()
            for prefix, m in self.modules.items()
            for k, v in m.state_dict().items()
        }

    def make_bundle(
        self, config: Any, outputs: list[str], n_parameters: Any, classes: Sequence | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A model file's tensors (:meth:`module_tensors`) and metadata: the runner's ``meta`` updated
        with its family, name, ``config``, ``classes`` (``[index, name, color]`` rows; left out when
        None), ``outputs``, halo and ``n_parameters``."""
        meta = dict(self.meta)
        fields: dict[str, Any] = {"family": self.family, "method": self.name, "config": config}
        if classes is not None:
            fields["classes"] = [[c.index, c.name, c.color] for c in classes]
        fields.update(outputs=outputs, halo=self.halo, n_parameters=n_parameters)
        meta.update(fields)
        return self.module_tensors(), meta

    # --- labels --------------------------------------------------------------------------------
    def class_mask(self, n: int) -> torch.Tensor:
        """``(1, n, 1, 1)`` additive logit mask: 0 for the indices of ``classes``, -inf for the others."""
        keep = torch.full((n,), float("-inf"), device=self.device)
        keep[[c.index for c in self.classes]] = 0.0
        return keep.view(1, n, 1, 1)

    def labels_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """int32 ``(H, W)`` labels of ``(1, n, H, W)`` logits; outputs without a class are never chosen."""
        logits = logits.float() + self.class_mask(logits.shape[1])
        return np.ascontiguousarray(logits.argmax(1)[0].to("cpu").numpy().astype(np.int32))

    # --- running -------------------------------------------------------------------------------
    def forward_fused(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_padded(self, fn: Callable[..., Any], *arrays: np.ndarray, multiple: int | None = None) -> Any:
        """Call ``fn`` on padded (1,1,H,W) tensors of ``arrays`` under inference mode; crop its outputs.

        ``fn`` may return one tensor or a tuple/list of tensors; each is cropped on its last two dims
        and returned as a tensor (still on the device) so callers choose what to convert.
        ``multiple`` overrides ``pad_multiple`` for this call (e.g. a sub-network with its own factor).
        """
        m = self.pad_multiple if multiple is None else int(multiple)
        with torch.inference_mode():
            ts = []
            hw = None
            for x in arrays:
                t, hw = pad_to_multiple(to_tensor(x, self._device), m)
                ts.append(t)
            out = fn(*ts)
            if isinstance(out, (tuple, list)):
                return type(out)(crop_to(o, hw) for o in out)
            return crop_to(out, hw)

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Two 2-D unit images of one shape -> fused 2-D float32 in [0, 1]."""
        a, b = check_pair(a, b)
        for m in self.modules.values():
            m.eval()
        out = self.run_padded(self.forward_fused, a, b)
        return tensor_to_unit(out)


class SingleNetRunner(TorchRunner):
    """A :class:`TorchRunner` of one network, ``modules["net"]``, whose ``receptive_radius`` is the halo.

    ``meta`` carries the model's record; ``meta["method"]`` names the runner (else ``default_method``).
    """

    #: the runner's name when its record names no method
    default_method: str = ""

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", meta: dict | None = None, pad_multiple: int | None = None):
        super().__init__({"net": net}, device=device, pad_multiple=pad_multiple)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def net(self) -> Any:
        return self.modules["net"]

    @property
    def name(self) -> str:
        return str(self.meta.get("method", self.default_method))

    @property
    def halo(self) -> int:
        return self.net.receptive_radius


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``"<prefix>.<key>"``, keyed by ``<key>`` (one module's state in a model file)."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def tensor_to_unit(t: torch.Tensor) -> np.ndarray:
    """(1,1,H,W) or (H,W) tensor -> (H, W) float32 NumPy clipped to [0, 1]."""
    x = t.detach().float().clamp(0.0, 1.0).to("cpu").numpy()
    return np.ascontiguousarray(x.reshape(x.shape[-2:]), dtype=np.float32)


__all__.append("tensor_to_unit")
