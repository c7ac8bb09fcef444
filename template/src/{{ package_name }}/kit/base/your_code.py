"""An error told in one line, at the place in the project's own code it passed last. Managed by the
copier-lightning template.

Used where the kit runs the researcher's code and reports its failure as a result instead of a
traceback: a sanity check that raises (`check`), an artifact builder that raises (`reproduce`).
The cause comes first: for a chained exception, the innermost one is what the researcher wrote.
"""

from __future__ import annotations

import traceback
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of `error`'s chain (its cause, or the one it was raised while handling)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return error


def in_your_code(error: BaseException) -> str:
    """Where in the project's own code (not the kit's, not a library's) `error` passed last: " in FILE line N,
    FUNCTION", or "" when it never did."""
    frames = [
        (frame, line)
        for frame, line in traceback.walk_tb(error.__traceback__)
        if "-packages" not in frame.f_code.co_filename and KIT not in Path(frame.f_code.co_filename).resolve().parents
    ]
    if not frames:
        return ""
    frame, line = frames[-1]
    return f" in {Path(frame.f_code.co_filename).name} line {line}, {frame.f_code.co_name}"


def one_line(error: BaseException) -> str:
    """`error` as "TYPE in FILE line N, FUNCTION: first line of its message", cause first."""
    cause = root_cause(error)
    first_line = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}{in_your_code(cause)}: {first_line}"
