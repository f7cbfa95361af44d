"""Bottom of the dependency order: error types and file helpers every other package may import.

Nothing here imports another ``mammoclip_monai`` package, torch or MONAI.
"""

from .errors import EXIT_FAILED_INPUTS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, InvalidInputError

__all__ = ["InvalidInputError", "EXIT_OK", "EXIT_FAILED_INPUTS", "EXIT_USAGE", "EXIT_INTERNAL"]
