"""Errors the local copy engine raises while an activity runs.

`CopyError` carries what ADF reports for a failed activity (an error code and a failure type
besides the message); every part of the engine raises it, so it lives apart from all of them.
"""

from __future__ import annotations


class CopyError(RuntimeError):
    """An activity failed while running (the message is what ADF would report)."""

    def __init__(self, message: str, code: str = "2200", failure_type: str = "UserError") -> None:
        super().__init__(message)
        self.code = code
        self.failure_type = failure_type
