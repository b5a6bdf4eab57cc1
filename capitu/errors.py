"""The one exception type the command line turns into a one-line error and exit code 2."""

import sys


class UserError(Exception):
    """Bad input from the user: a missing path, an invalid option, a corrupt file."""


def warn(message: str) -> None:
    print(f"capitu: warning: {message}", file=sys.stderr, flush=True)
