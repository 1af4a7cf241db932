"""Fusion quality metrics (EN ... SCD) and segmentation metrics (IoU, Dice)."""
