"""The one exception type that the command line turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


def run_cli(body) -> int:
    """Runs a command-line body; a UserError becomes `error: <message>` on stderr and exit 2."""
    import sys

    try:
        return body()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
