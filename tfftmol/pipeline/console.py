"""What a run prints: each warning once, and the log without the lines that repeat one.

Stage 1's summary lists its warnings, and each is also a :class:`~tfftmol.core.threshold.TfftWarning`;
printed both ways, a user reads every warning twice.  :func:`warnings_once` shows each distinct warning
once (as ``warning: <message>``, without file and line), and :func:`log_without` drops the summary
lines that repeat a warning already shown.  The command line uses both for the whole process;
:func:`tfftmol.run` uses them for the length of a run when it prints its own log.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator

__all__ = ["warnings_once", "log_without"]


@contextlib.contextmanager
def warnings_once(restore: bool = True, plain: bool = False) -> Iterator[set]:
    """Show each distinct warning message once; yields the set of shown texts.

    Args:
        restore: put the previous ``warnings.showwarning`` back on exit (the command line keeps it).
        plain: print ``warning: <message>`` to stderr (the command line); else hand the first of each
            message to the previous ``showwarning``, so filters and ``catch_warnings(record=True)``
            (and ``pytest.warns``) see it as before.
    """
    shown: set = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text in shown:
            return
        shown.add(text)
        if plain:
            print(f"warning: {text}", file=sys.stderr if file is None else file)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield shown
    finally:
        if restore:
            warnings.showwarning = previous


def log_without(shown: set, out: Callable[[str], None] = print) -> Callable[[str], None]:
    """A log that leaves out the lines repeating a warning in ``shown`` (and a ``warnings:`` header left empty)."""
    def log(msg: str) -> None:
        lines = [ln for ln in str(msg).split("\n") if not any(ln.strip() == f"- {w}" for w in shown)]
        if lines and lines[-1].strip() == "warnings:":
            lines.pop()
        if lines:
            out("\n".join(lines))
    return log
