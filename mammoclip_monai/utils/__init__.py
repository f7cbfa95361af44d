"""Bottom of the dependency order: error types and file helpers every other package may import.

Nothing here imports another ``mammoclip_monai`` package, torch or MONAI.
"""

from .errors import (
    EXIT_FAILED_INPUTS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    InputsFailedError,
    InvalidInputError,
    NoInputsError,
    UsageError,
    as_flag,
    brief_errors,
    exit_code,
    one_line,
    user_error,
)

__all__ = ["InvalidInputError", "UsageError", "NoInputsError", "InputsFailedError", "as_flag", "EXIT_OK",
           "EXIT_FAILED_INPUTS", "EXIT_USAGE", "EXIT_INTERNAL", "brief_errors", "exit_code", "one_line",
           "user_error"]
