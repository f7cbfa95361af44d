"""The package version (one place: setup.py reads it, dataset.json and MONAI Label report it)."""

__version__ = "0.1.0"
