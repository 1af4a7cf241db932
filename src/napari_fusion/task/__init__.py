"""Task heads: a segmentation learned in a second from painted strokes, on filter features of both
sources and of the fused image (ilastik-style), attached to any fusion model.

- :mod:`.features`: the multi-scale filter bank (torch; CPU or GPU), differentiable;
- :mod:`.head`: the pixel classifier (a small MLP, class-balanced, no painted class can vanish);
- :mod:`.tuned`: a fusion runner with a head: fused image from the model, labels from the head,
  saved in one model file.
"""
from .features import FEATURE_SIGMAS, filter_bank, pixel_features
from .head import PixelHead, fit_head
from .tuned import TunedRunner, attach_head

__all__ = ["FEATURE_SIGMAS", "filter_bank", "pixel_features", "PixelHead", "fit_head", "TunedRunner", "attach_head"]
