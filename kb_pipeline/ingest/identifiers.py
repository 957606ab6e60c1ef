"""One normal form for tags and access groups, wherever they come from.

A document's `acl` (front matter), a user's groups (`kb users add --groups`) and the groups a search runs
with must compare equal when a person means the same name, or access silently fails (or leaks): so all
of them go through `normalise_identifier`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

MAX_IDENTIFIER_CHARS = 128  # the width of the tag and group-name columns


def normalise_identifier(value: str) -> str:
    """NFC, lower case, runs of whitespace collapsed: ' Human \\t Resources' -> 'human resources'."""
    return unicodedata.normalize("NFC", " ".join(str(value).split()).lower())


def normalise_identifiers(values: Iterable[str]) -> tuple[str, ...]:
    """Each value normalised; blanks dropped, duplicates removed, first occurrence order kept."""
    return tuple(dict.fromkeys(item for item in map(normalise_identifier, values) if item))
