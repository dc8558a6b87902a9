"""The one exception type of the training commands' library code.

Library functions (``ship.select_checkpoint``, ``average.average_models``, the trainer...) raise
``TrainingError`` with a message meant for the user; ``python -m training`` prints that message to
stderr, without a traceback, and exits with ``exit_code``. Code that calls the functions directly
can catch it like any other exception.
"""

from __future__ import annotations


class TrainingError(Exception):
    """A training command cannot go on for a reason the user can fix (a missing file, a bad option)."""

    exit_code = 1
