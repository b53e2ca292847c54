"""Pictures as PNG files (matplotlib, Agg): masks over training crops (masks.py), patch-feature
PCA (features.py), training curves (curves.py), nearest neighbours (neighbors.py); figure.py
holds the shared panel sizes and PNG writing. Each figure is a function returning a
matplotlib Figure, ``*_png`` its PNG bytes and ``write_*_png`` a file written atomically."""

from .curves import curves_figure, curves_png, write_curves_png
from .features import features_figure, features_png, write_features_png
from .masks import masks_figure, masks_png, write_masks_png
from .neighbors import neighbors_figure, neighbors_png, write_neighbors_png

__all__ = [
    "curves_figure", "curves_png", "features_figure", "features_png", "masks_figure", "masks_png",
    "neighbors_figure", "neighbors_png", "write_curves_png", "write_features_png", "write_masks_png",
    "write_neighbors_png",
]
