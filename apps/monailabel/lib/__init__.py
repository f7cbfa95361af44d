"""Task code of the MammoCLIP MONAI Label app (imported by ``main.py`` as ``lib``, MONAI Label's convention)."""
