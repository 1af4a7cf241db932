"""``python -m napari_fusion.cli``: the command line."""
import sys

from .parser import main

sys.exit(main())
