"""The one exception type the CLI turns into a clean message instead of a traceback."""


class CafeError(Exception):
    """A user-facing error: bad params, missing inputs, corrupt files. The message says what and where."""
