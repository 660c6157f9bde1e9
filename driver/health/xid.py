"""XID classification: fatal (the GPU must not get new work) or ignorable (an application's own fault).

An XID is the NVIDIA kernel driver's numbered error report. Most numbers mean the GPU, its memory or its
links are in trouble and need attention (often a reset); a few are raised when one application misbehaves
(an illegal memory access, a kernel that hangs) and say nothing about the hardware. The classification
follows the NVIDIA DRA driver: the ignorable set is small and explicit, every other XID -- including ones
this table does not know -- is fatal, so a new failure mode is never silently treated as harmless.

Operators extend the list with ``--health-ignore-xids`` (more ignorable XIDs) and ``--health-fatal-xids``
(treat a default-ignorable XID as fatal); docs/health.md carries the table :func:`xid_markdown_table` renders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: XIDs raised for an application's own fault; they do not make the GPU unusable for others.
DEFAULT_IGNORED_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

#: Short descriptions of well-known XIDs (for taint messages and docs), not an exhaustive catalogue.
DESCRIPTIONS: dict[int, str] = {
    13: "graphics engine exception (usually an application fault)",
    31: "GPU memory page fault (usually an application fault)",
    43: "GPU stopped processing after an application fault",
    45: "preemptive cleanup after an earlier error",
    48: "double-bit (uncorrectable) ECC error",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failed",
    68: "video decoder exception",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout",
    119: "GSP RPC timeout",
    120: "GSP error",
}

MAX_XID = 0xFFFF


class XidListError(ValueError):
    """A list of XIDs given by the user cannot be parsed; the message names the entry."""


def parse_xid_list(text: str, what: str = "XID list") -> frozenset[int]:
    """``"13, 31,43"`` -> {13, 31, 43}; empty text -> empty set."""
    found: set[int] = set()
    for raw in text.replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            value = int(item, 10)
        except ValueError:
            raise XidListError(f"{what}: {item!r} is not an XID number") from None
        if not 0 < value <= MAX_XID:
            raise XidListError(f"{what}: XID {value} is out of range 1..{MAX_XID}")
        found.add(value)
    return frozenset(found)


@dataclass(frozen=True)
class XidPolicy:
    """Which XIDs are ignorable; everything else is fatal."""

    ignored: frozenset[int] = DEFAULT_IGNORED_XIDS

    @classmethod
    def build(cls, ignore: Iterable[int] = (), fatal: Iterable[int] = ()) -> XidPolicy:
        """The defaults, plus ``ignore``, minus ``fatal`` (``fatal`` wins when an XID is in both)."""
        return cls(frozenset((DEFAULT_IGNORED_XIDS | set(ignore)) - set(fatal)))

    def is_fatal(self, xid: int) -> bool:
        return xid not in self.ignored

    def describe(self, xid: int) -> str:
        """``XID 79 (GPU has fallen off the bus)``; unknown XIDs get no description."""
        text = DESCRIPTIONS.get(xid)
        return f"XID {xid} ({text})" if text else f"XID {xid}"


def xid_markdown_table() -> str:
    """The table docs/health.md shows: every described XID and its default class."""
    lines = ["| XID | meaning | default class |", "|---|---|---|"]
    for xid, text in sorted(DESCRIPTIONS.items()):
        kind = "ignorable" if xid in DEFAULT_IGNORED_XIDS else "fatal"
        lines.append(f"| {xid} | {text} | {kind} |")
    lines.append("| any other | | fatal |")
    return "\n".join(lines)
