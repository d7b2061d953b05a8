"""The one exception type users see.

Anything a user can cause (a bad flag, a broken file, an impossible option) is raised as
`LifelongError` with a message that names the problem and the fix. The command line prints that
message on one line and exits with status 2; Python callers can catch it like any exception.
"""

from __future__ import annotations


class LifelongError(Exception):
    """A problem with the user's input or setup, with a message that says how to fix it."""
