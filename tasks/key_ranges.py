"""Where to cut a long listing into key ranges that other listers can take over.

A sorted listing of one prefix is serial: each page needs the token of the one before. Cut the
keys still ahead into ranges [b0, b1), [b1, b2), ... and a pool can list them side by side.

The cuts are guesses from the keys seen so far: the position where the first and the last key
differ is where keys change fastest, so cuts go there (`img_0034` -> `img_0035`, `img_0036`, ...)
and at the `DEPTH - 1` positions before it, for ranges ten and a hundred times as long. Any cuts
would be correct (ranges always cover every key once); good ones only make the work even.

Cuts never separate an object from its sidecars. Every member of a sidecar group is `X` (a
name without a dot) or starts with `X.` (tasks.sidecars), so a cut `b` falls inside a group only
if `b` is `X` followed by `.` or a character below it (`-`, space, ...). Cuts therefore copy no
`.` after the listing's prefix, and copy a character below `.` only where the name before it is
not a key (`is_key`, one look-up per such place; unknown counts as a key). A prefix whose last
name holds a `.` is not cut at all: every name under it is in one group.
"""

from __future__ import annotations

import string
from collections.abc import Callable

DEPTH = 3  # positions cut at: where keys vary, and the two before it
_CLASSES = (string.digits, string.ascii_uppercase, string.ascii_lowercase)
_CLASS_OF = {c: cls for cls in _CLASSES for c in cls}


def split_points(
    first: str, last: str, prefix: str, end: str | None = None, is_key: Callable[[str], bool] | None = None
) -> list[str]:
    """Sorted cuts above `last` (and below `end`) for the keys under `prefix` still to list.

    `first` and `last` are the first and the last key (or common prefix) this lister has seen;
    a cut copies `last` up to a position and puts a larger character of the same kind (digit,
    upper or lower case letter) there. See the module docstring for the positions never used.
    """
    if not last.startswith(prefix) or "." in prefix.rpartition("/")[2]:
        return []  # under `dir/a.` every name is in the one group `dir/a.`
    vary = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    usable = len(prefix)  # cuts may copy last[len(prefix):usable]
    while usable < min(vary, len(last) - 1):
        here = last[usable]
        if here == "." or (here < "." and (is_key is None or is_key(last[:usable]))):
            break
        usable += 1
    cuts: set[str] = set()
    for at in range(max(len(prefix), vary - DEPTH + 1), min(vary, usable) + 1):
        here = last[at]
        for c in _CLASS_OF.get(here, ""):
            if c > here:
                cuts.add(last[:at] + c)
    return sorted(c for c in cuts if c > last and (end is None or c < end))
