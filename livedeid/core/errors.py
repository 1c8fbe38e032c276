"""Errors that reach the user as one line, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, missing device, bad config). The CLI prints
    ``livedeid: error: <message>`` and exits with status 2."""
