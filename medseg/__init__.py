"""medseg: segmentation losses, distance-map transforms and MONAI bundles."""

__version__ = "0.1.0"
