"""napari widgets: thin Qt/magicgui views over the core API (the only package that imports Qt)."""
