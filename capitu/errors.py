"""The one exception type the command line turns into a one-line error and exit code 2; warnings go
through logging (the `capitu` logger: the command line shows them as one line each)."""

import logging


class UserError(Exception):
    """Bad input from the user: a missing path, an invalid option, a corrupt file."""


def warn(message: str) -> None:
    logging.getLogger("capitu").warning(message)
