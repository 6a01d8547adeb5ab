"""Values read from Redis, made safe to show on a terminal.

Redis is the trust boundary: any writer can put `[/oops]` in an event type (rich markup that
crashes a render) or `ESC]0;…` in a reason (a terminal escape that retitles, clears or worse).
Every command that shows a Redis value passes it through here: plain() for a printed line, text()
for a rich renderable. Neither ever parses markup.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 (with TAB, LF, ESC), DEL and C1 are what terminals act on; the bidi controls reorder what is
# shown around them ("Trojan Source"); a lone surrogate cannot even be encoded to UTF-8 for output.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")      # ESC -> \x1b


def plain(value: object) -> str:
    """`value` as one line of inert text: each unsafe character becomes a visible escape."""
    return _UNSAFE.sub(_escaped, value if isinstance(value, str) else str(value))


def text(*parts: str | tuple[str, str]) -> Text:
    """Text.assemble over untrusted parts (a string, or (string, style)): never markup, escaped."""
    return Text.assemble(*((plain(p[0]), p[1]) if isinstance(p, tuple) else plain(p) for p in parts))
