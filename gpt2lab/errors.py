"""One exception type for mistakes a user can fix (bad config, missing file, ...).

The command line prints these as a single ``error: ...`` line, without a traceback.
Anything else that escapes is a bug in gpt2lab and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class PeerFailure(RuntimeError):
    """Another process of a multi-process job died or hung: a collective failed or timed out."""
