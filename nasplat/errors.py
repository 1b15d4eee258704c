"""The two kinds of failure nasplat tells apart: input a user can fix, and everything else (a bug).

`UserError` is raised for bad input: an unknown name, a malformed value, a file that is not what it
should be. The CLI prints its message as one line and exits 2. Any other exception is a bug in nasplat
(or in a plug-in): the CLI exits 1 and says where its traceback was written.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, told in one line that names what was wrong and what would be right.

    A subclass of ValueError, so that code catching ValueError around nasplat calls keeps working.
    """


class LatencyError(UserError):
    """A latency source that cannot answer here: a device or runtime that cannot measure, a table without the
    architecture. Here, below the cost layer, because the strategies' free checks re-raise it."""
