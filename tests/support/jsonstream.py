"""A JSON stream -- documents one after another, as in device metadata files -- decoded in order."""

from __future__ import annotations

import json
from typing import Any


def documents(text: str | bytes) -> list[Any]:
    """Every document of ``text``; whitespace between them is skipped, anything else is an error."""
    if isinstance(text, bytes):
        text = text.decode()
    decoder, docs, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        doc, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        docs.append(doc)
    return docs
