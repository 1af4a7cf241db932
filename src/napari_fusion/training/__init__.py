"""Training code for the learned methods (runs without Qt or napari, on CPU or GPU)."""
