"""--include / --exclude globs, matched on the key relative to the source prefix.

`*` and `?` stay within one path segment, `**` crosses segments, `[...]` is a class. A pattern
without a slash matches the file name at any depth (like .gitignore), so `*.jpg` takes every JPEG.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from encord_ingest.errors import UsageError


def glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[]", i) else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = "".join(out)
    if "/" not in pattern.rstrip("/"):
        regex = f"(?:.*/)?{regex}"
    return regex


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{glob_to_regex(p)})" for p in patterns) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise UsageError(f"invalid glob in {list(patterns)!r}: {exc}") from None


@dataclass(slots=True)
class KeyFilter:
    include: re.Pattern[str] | None
    exclude: re.Pattern[str] | None

    @classmethod
    def build(cls, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> KeyFilter:
        return cls(compile_globs(include), compile_globs(exclude))

    def accepts(self, relative_key: str) -> bool:
        if self.include is not None and self.include.match(relative_key) is None:
            return False
        return self.exclude is None or self.exclude.match(relative_key) is None
