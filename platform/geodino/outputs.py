"""Fixed-name files a command writes into a folder the user names (probe.pth, comparison.csv, attention.png).

Why: a rerun must be able to replace what geodino wrote there before, but never a user's file that happens
to carry the same name: no command deletes or overwrites a file it did not write. Each such folder keeps a
ledger, ``.geodino_outputs.json``, of the files geodino wrote into it and which command wrote them. A file
in the way that the ledger does not list stops the command before it computes anything. Names are entered
in the ledger before they are written, so a file left by an interrupted run is still known to be geodino's.
(predict and prepare keep stronger manifests of their own: they also resume.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from geodino.errors import GeodinoError

LEDGER = ".geodino_outputs.json"


class OutputError(GeodinoError, OSError):
    """A folder a command would write into holds a file of the same name that geodino did not write, or cannot
    be written."""


def read_ledger(folder: str) -> dict[str, str]:
    """{file name: the command that wrote it}; empty for a folder geodino never wrote into."""
    path = os.path.join(folder, LEDGER)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def claim_outputs(folder: str, names: Sequence[str], command: str, flag: str) -> dict[str, str]:
    """The path of each of `names` in `folder`, once none of them is a file geodino did not write there.

    `command` is recorded as the writer; `flag` is the option that chose `folder`, named in the error."""
    ledger = read_ledger(folder)
    foreign = [name for name in names if os.path.lexists(os.path.join(folder, name)) and name not in ledger]
    if foreign:
        raise OutputError(
            f"{flag} {folder}: {', '.join(foreign)} already there and not written by geodino; {command} does not "
            f"replace files it did not write: choose another {flag}, or move {'them' if len(foreign) > 1 else 'it'} "
            "away yourself")
    try:
        os.makedirs(folder, exist_ok=True)
        write_ledger(folder, {**ledger, **{name: command for name in names}})
    except OSError as error:
        raise OutputError(f"{flag} {folder}: cannot write there ({error.strerror}); choose another {flag}") \
            from error
    return {name: os.path.join(folder, name) for name in names}


def adopt_outputs(folder: str, names: Sequence[str], command: str) -> None:
    """Enter files into the ledger that geodino is known to have written before it kept one (the caller has the
    proof), so that a rerun may replace them."""
    write_ledger(folder, {**read_ledger(folder), **{name: command for name in names}})


def write_ledger(folder: str, ledger: dict[str, str]) -> None:
    with open(os.path.join(folder, LEDGER), "w") as handle:
        json.dump(ledger, handle, indent=1)
