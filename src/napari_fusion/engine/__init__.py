"""Run any registered method on any size: device choice, tiling, volumes, the fusion pipeline."""
