"""Where the bundle lives, so that its configs run from the repository root and from inside the bundle.

Nothing here imports torch, MONAI or another ``mammoclip_monai`` package.
"""

from __future__ import annotations

import os

__all__ = ["bundle_root"]


def bundle_root(start: str | os.PathLike[str] = ".") -> str:
    """The bundle folder as an absolute path: ``<start>/bundle`` when ``start`` is the repository root
    (it holds ``bundle/configs``), else ``start`` itself (the command runs from inside the bundle).

    The configs' ``ckpt_dir``, ``output_dir``, ``cache_dir`` and the synthetic data hang below it.
    """
    candidate = os.path.join(os.fspath(start), "bundle")
    return os.path.abspath(candidate if os.path.isdir(os.path.join(candidate, "configs")) else os.fspath(start))
