"""One exception type for mistakes a user can fix (bad config, missing file, ...).

The command line prints these as a single ``error: ...`` line (:func:`print_error`), without a traceback.
Anything else that escapes is a bug in gpt2lab and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class PeerFailure(RuntimeError):
    """Another process of a multi-process job died or hung: a collective failed or timed out."""


def print_error(message: str) -> None:
    """``error: message`` on stderr in one write: under torchrun every rank writes to the same pipe, and print's
    two writes (the text, then the newline; each a system call with PYTHONUNBUFFERED) let another rank's line in."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def brief(value, limit: int = 40) -> str:
    """``value`` as a one-line error message may quote it: its repr when short and on one line, else
    its type (a tensor or array, which has a shape, always shows its type)."""
    text = repr(value)
    if len(text) <= limit and "\n" not in text and not hasattr(value, "shape"):
        return text
    return f"<{type(value).__name__}>"
