"""Marks a search phrase in the texts of the trace page (``/traces/ID?text=...``).

Every occurrence, ignoring case, is wrapped in ``<mark class="hit">``; the first one gets
``id="hit-1"``, so the trace list's links (``...?text=...#hit-1``) open the page at the first
match without a script. The text is escaped here: the result is safe markup.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from markupsafe import Markup, escape

FIRST_HIT = "hit-1"


class Highlighter:
    """Marks ``phrase`` in the texts it is called on, counting the marks over one page."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase
        self._pattern = re.compile(re.escape(phrase), re.IGNORECASE)
        self.count = 0

    def __call__(self, text: str) -> Markup:
        parts: list[Markup] = []
        last = 0
        for match in self._pattern.finditer(text):
            parts.append(escape(text[last : match.start()]))
            self.count += 1
            anchor = f' id="{FIRST_HIT}"' if self.count == 1 else ""
            parts.append(Markup(f'<mark class="hit"{anchor}>') + escape(match.group()))
            parts.append(Markup("</mark>"))
            last = match.end()
        parts.append(escape(text[last:]))
        return Markup("").join(parts)

    def found(self, text: str) -> bool:
        """Whether ``text`` contains the phrase (a collapsed text with a match opens)."""
        return self._pattern.search(text) is not None


def trace_link_suffix(phrase: str | None) -> str:
    """What a trace list appends to a trace's link so the trace page marks ``phrase`` and
    opens at its first occurrence (empty without a search)."""
    if not phrase:
        return ""
    return f"?text={quote(phrase, safe='')}#{FIRST_HIT}"
