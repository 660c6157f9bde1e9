"""Semantic Versioning 2.0.0 strings as Kubernetes checks them (``version`` device attributes, CEL's semver
library): the API server's own regular expression, matched whole as Go does (no trailing newline) -- no
leading zeros, no ``v`` prefix.

Beside :mod:`driver.quantity` at the bottom of the package, because both the API rules and the CEL library
(:mod:`driver.cel.library`) need it.
"""

from __future__ import annotations

import re

_NUMERIC_ID = r"(0|[1-9]\d*)"
_PRERELEASE_ID = r"(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_BUILD_ID = r"[0-9a-zA-Z-]+"
_SEMVER_RE = re.compile(
    rf"{_NUMERIC_ID}\.{_NUMERIC_ID}\.{_NUMERIC_ID}"
    rf"(-{_PRERELEASE_ID}(\.{_PRERELEASE_ID})*)?"
    rf"(\+{_BUILD_ID}(\.{_BUILD_ID})*)?",
    re.ASCII,
)


def is_semver(value: str) -> bool:
    return bool(_SEMVER_RE.fullmatch(value))
