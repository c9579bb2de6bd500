"""How every zerosr command ends on a user's mistake: one line on stderr, exit code 2."""

from __future__ import annotations

import functools
import os
import sys

from zerosr.errors import UserError


def exit_on_user_error(function):
    """Turn a UserError into `error: <message>` and exit 2; HYDRA_FULL_ERROR=1 keeps the traceback."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return guarded
