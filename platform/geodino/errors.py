"""The errors geodino raises for things a user can fix, and the one base class they share.

Why a base class: an entry script catches ``GeodinoError`` and prints its message as one line
(the message names the file, flag or row and says what to do), while an unexpected failure keeps
its traceback. Each subclass also keeps the builtin base it had before (``ValueError``, ...), so
code that caught those still works.
"""

from __future__ import annotations


class GeodinoError(Exception):
    """A problem with the user's input or environment; the message says what to change."""


class RejectedPatch(GeodinoError):
    """Raised by prepare's per-patch checks; the message is the reason written to the rejects file."""


class ConfigError(GeodinoError, ValueError):
    """A flag's value that cannot work (a choice that does not exist, a size of zero, ...); names the flag."""


class MissingInputError(GeodinoError, FileNotFoundError):
    """A file or folder the user pointed at (metadata, its card, weights, an archive) is not there; names it."""


class DamagedInputError(GeodinoError, ValueError):
    """A file the user pointed at is there but is not what it should be (a parquet pyarrow cannot open, a card
    that is not JSON, a table that is not CSV); names the file and how to make it again."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or Ray stopping the driver) ended a run before it finished; the message says what was kept and how
    to continue. A KeyboardInterrupt, so that no `except Exception` swallows it."""
