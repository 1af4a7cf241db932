"""Readers and writers: images, multi-band/GeoTIFF, NIfTI, pair folders; atomic writes."""
