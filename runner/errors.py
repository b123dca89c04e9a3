"""Errors whose message already says what was wrong and what to do instead. A single run prints the message and
exits with status 1, without a stack trace after it; a sweep records it in the job's results and goes on."""


class ActionableError(Exception):
    """Base of the errors the user can act on from the message alone (no stack trace needed)."""
