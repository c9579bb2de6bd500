"""The one exception type for a user's mistake.

A `UserError` is printed as a single line naming the problem and the fix, and the process exits
with code 2 (see `zerosr.cli.run_guarded`). Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad path, image, override or file: one line for the user, exit code 2."""
