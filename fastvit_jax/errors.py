"""One exception type for problems the user can fix; the CLI prints it as one line."""


class FastViTError(Exception):
    """Bad input: a file, key, shape or option the user supplied. The message is the whole story."""
