"""MammoCLIP-MONAI: Mammo-CLIP as a MONAI bundle and a Python library.

Importing the package is cheap: sub-modules (which pull in torch and MONAI) load on first use.
"""

from __future__ import annotations

from .version import __version__
