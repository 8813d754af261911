"""Errors a user can cause. The CLI prints them as one line and exits with code 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user: a missing file, an unknown key, a wrong type. Exit code 2."""

    exit_code = 2
