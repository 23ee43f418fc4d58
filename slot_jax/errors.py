"""The one exception type that the command line turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
