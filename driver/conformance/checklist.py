"""The upstream AI-conformance checklist: load it and fill it (checking a filled one: :mod:`submission`).

The checklist (``KubernetesAIConformance-1.NN.yaml``) is loaded from the path or URL the user gives, never
retyped. Filling edits the document's *text*: only the ``status``, ``evidence`` and ``notes`` values of the
requirements the suite covers, and the metadata values the user supplies, are rewritten in place (at the
positions PyYAML's composer reports); every other byte -- ids, descriptions, levels, comments, quoting, line
breaks -- stays as it was. A YAML dumper would re-wrap and re-quote descriptions, which the CNCF validator
rejects, so none is used. The result is parsed again and compared with the input before it is returned.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STATUSES = ("Implemented", "Not Implemented", "Partially Implemented", "N/A")
LEVELS = ("MUST", "SHOULD")
FIELDS = ("status", "evidence", "notes")
_PLACEHOLDER_RE = re.compile(r"^\s*\[.*\]\s*$", re.DOTALL)
_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_METADATA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class ChecklistError(Exception):
    """The checklist cannot be loaded, is not an AI-conformance checklist, or cannot be filled."""


@dataclass(frozen=True)
class Requirement:
    section: str
    id: str
    description: str
    level: str
    status: str = ""
    evidence: tuple[str, ...] = ()
    notes: str = ""


@dataclass(frozen=True)
class Fill:
    """What the suite writes for one requirement (an empty status leaves it blank, with the notes)."""

    status: str
    evidence: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.status and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.status == "N/A" and not self.notes.strip():
            raise ValueError("status N/A needs notes saying why the requirement does not apply")


@dataclass(frozen=True)
class Checklist:
    text: str
    source: str
    metadata: Mapping[str, Any]
    requirements: tuple[Requirement, ...]

    @property
    def kubernetes_version(self) -> str:
        return str(self.metadata.get("kubernetesVersion", ""))

    def requirement(self, requirement_id: str) -> Requirement | None:
        return next((r for r in self.requirements if r.id == requirement_id), None)

    def placeholders(self) -> list[str]:
        """Metadata keys whose value is still a ``[placeholder]``."""
        return [k for k, v in self.metadata.items() if isinstance(v, str) and is_placeholder(v)]


def is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER_RE.match(value))


# -- loading -----------------------------------------------------------------------------------------


def read_source(source: str, timeout: float = 30.0) -> str:
    """The text at a path or an http(s) URL."""
    if _URL_RE.match(source):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data: bytes = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise ChecklistError(f"cannot fetch checklist {source}: {err}") from err
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ChecklistError(f"cannot read checklist {source}: {err.strerror or err}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ChecklistError(f"checklist {source} is not UTF-8 text: {err}") from err


def load_checklist(source: str) -> Checklist:
    return parse_checklist(read_source(source), source)


def _pairs(node: MappingNode) -> list[tuple[ScalarNode, Node]]:
    pairs: list[tuple[ScalarNode, Node]] = []
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            raise ChecklistError(f"line {key.start_mark.line + 1}: mapping keys must be plain strings")
        pairs.append((key, value))
    return pairs


def _child(node: MappingNode, key: str) -> Node | None:
    return next((v for k, v in _pairs(node) if k.value == key), None)


@dataclass
class _Layout:
    """Where things are in the text (composer nodes), beside their parsed values."""

    root: MappingNode
    metadata: MappingNode
    requirements: list[tuple[Requirement, MappingNode]] = field(default_factory=list)


def _compose(text: str, source: str) -> _Layout:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ChecklistError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(root, MappingNode):
        raise ChecklistError(f"{source}: not a checklist: the document is not a mapping")
    metadata = _child(root, "metadata")
    spec = _child(root, "spec")
    if not isinstance(metadata, MappingNode):
        raise ChecklistError(f"{source}: not a checklist: no 'metadata' mapping")
    if not isinstance(spec, MappingNode):
        raise ChecklistError(f"{source}: not a checklist: no 'spec' mapping of sections")
    layout = _Layout(root, metadata)
    for section_key, section in _pairs(spec):
        if not isinstance(section, SequenceNode):
            raise ChecklistError(f"{source}: spec.{section_key.value}: expected a list of requirements")
        for index, item in enumerate(section.value):
            where = f"{source}: spec.{section_key.value}[{index}]"
            if not isinstance(item, MappingNode):
                raise ChecklistError(f"{where}: expected a mapping with id, description and level")
            layout.requirements.append((_requirement(section_key.value, item, where), item))
    if not layout.requirements:
        raise ChecklistError(f"{source}: the checklist lists no requirements")
    ids = [r.id for r, _ in layout.requirements]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ChecklistError(f"{source}: requirement id(s) listed twice: {', '.join(duplicates)}")
    return layout


def _requirement(section: str, node: MappingNode, where: str) -> Requirement:
    data = yaml.safe_load(yaml.serialize(node))  # the values of this one mapping
    for key in ("id", "description", "level"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ChecklistError(f"{where}: '{key}' must be a non-empty string")
    if data["level"] not in LEVELS:
        raise ChecklistError(f"{where} ({data['id']}): level {data['level']!r} is not MUST or SHOULD")
    evidence = data.get("evidence") or []
    if not isinstance(evidence, list):
        raise ChecklistError(f"{where} ({data['id']}): evidence must be a list")
    return Requirement(
        section=section,
        id=data["id"],
        description=data["description"],
        level=data["level"],
        status=str(data.get("status") or ""),
        evidence=tuple(str(e) for e in evidence),
        notes=str(data.get("notes") or ""),
    )


def parse_checklist(text: str, source: str = "<checklist>") -> Checklist:
    layout = _compose(text, source)
    metadata = yaml.safe_load(yaml.serialize(layout.metadata)) or {}
    return Checklist(
        text=text,
        source=source,
        metadata=metadata,
        requirements=tuple(r for r, _ in layout.requirements),
    )


# -- filling -----------------------------------------------------------------------------------------


def check_metadata(values: Mapping[str, str]) -> list[str]:
    """Problems with metadata the user supplies (placeholders are refused, as the CNCF validator does)."""
    problems = []
    for key, value in values.items():
        if not _METADATA_KEY_RE.match(key):
            problems.append(f"metadata key {key!r} is not a plain identifier")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"metadata {key}: the value must be a non-empty string")
        elif is_placeholder(value):
            problems.append(f"metadata {key}: {value!r} is a [placeholder], not a value")
    return problems


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are a subset of YAML's)."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def _end(node: Node) -> int:
    """Where a value's own text ends: block collections and scalars include the following line breaks."""
    if isinstance(node, (SequenceNode, MappingNode)) and not node.flow_style and node.value:
        last = node.value[-1]
        return _end(last[1] if isinstance(node, MappingNode) else last)
    return int(node.end_mark.index)


def _content_end(text: str, node: Node) -> int:
    """Where a value's text ends, without the line breaks (and blank lines) block values take along."""
    end = _end(node)
    while end > node.start_mark.index and text[end - 1] in "\r\n":
        end -= 1
    return end


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", index)
    if newline == -1:
        return len(text)
    return newline - 1 if newline > 0 and text[newline - 1] == "\r" else newline


def _value_edits(text: str, key: ScalarNode, value: Node, new: str | Sequence[str], eol: str) -> list[_Edit]:
    """Replace the value of ``key`` in place; lists become block sequences under the key's line."""
    colon = text.index(":", key.end_mark.index)
    end = max(colon + 1, _content_end(text, value))  # keep the line break that ends the value
    if isinstance(new, str):
        return [_Edit(colon + 1, end, " " + _quote(new))]
    if isinstance(value, SequenceNode) and not value.flow_style and value.value and new:
        # Rewrite the items where they stand: comments and indentation around them stay.
        separator = eol + " " * value.start_mark.column
        return [_Edit(value.start_mark.index, end, separator.join(f"- {_quote(item)}" for item in new))]
    edits = [_Edit(colon + 1, end, "")]
    if new:
        indent = " " * (key.start_mark.column + 2)
        at = _line_end(text, end)
        edits.append(_Edit(at, at, "".join(f"{eol}{indent}- {_quote(item)}" for item in new)))
    else:
        edits[0] = _Edit(colon + 1, end, " []")
    return edits


def _insert_edit(text: str, mapping: MappingNode, key: str, new: str | Sequence[str], eol: str) -> _Edit:
    """Add ``key: value`` as a new last entry of a block mapping."""
    first_key = mapping.value[0][0]
    indent = " " * first_key.start_mark.column
    at = _line_end(text, _content_end(text, mapping.value[-1][1]))
    if isinstance(new, str):
        body = f" {_quote(new)}"
    else:
        body = "".join(f"{eol}{indent}  - {_quote(item)}" for item in new) if new else " []"
    return _Edit(at, at, f"{eol}{indent}{key}:{body}")


def _mapping_edits(
    text: str, mapping: MappingNode, values: Mapping[str, str | Sequence[str]], eol: str
) -> list[_Edit]:
    if mapping.flow_style:
        raise ChecklistError(
            f"line {mapping.start_mark.line + 1}: flow-style mappings cannot be filled in place"
        )
    edits: list[_Edit] = []
    present = {k.value: (k, v) for k, v in _pairs(mapping)}
    for key, new in values.items():
        if key in present:
            edits += _value_edits(text, *present[key], new, eol)
        else:
            edits.append(_insert_edit(text, mapping, key, new, eol))
    return edits


def _apply(text: str, edits: Iterable[_Edit]) -> str:
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise ChecklistError("internal error: overlapping checklist edits")
    out = []
    last = 0
    for edit in ordered:
        out += [text[last : edit.start], edit.text]
        last = edit.end
    out.append(text[last:])
    return "".join(out)


def merge_evidence(existing: Sequence[str], ours: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*existing, *ours]))


def fill_checklist(
    checklist: Checklist, fills: Mapping[str, Fill], metadata: Mapping[str, str] | None = None
) -> str:
    """The checklist text with ``fills`` (by requirement id) and ``metadata`` written in.

    Status and notes of a filled requirement are replaced; its evidence keeps any entries it already had,
    followed by the suite's. Requirements without a fill, and everything else, are left byte for byte.
    """
    metadata = dict(metadata or {})
    problems = check_metadata(metadata)
    if problems:
        raise ChecklistError("; ".join(problems))
    unknown = sorted(set(fills) - {r.id for r in checklist.requirements})
    if unknown:
        raise ChecklistError(f"no requirement {', '.join(unknown)} in {checklist.source}")
    text = checklist.text
    eol = "\r\n" if "\r\n" in text else "\n"
    layout = _compose(text, checklist.source)
    edits: list[_Edit] = []
    if metadata:
        edits += _mapping_edits(text, layout.metadata, metadata, eol)
    for requirement, node in layout.requirements:
        fill = fills.get(requirement.id)
        if fill is None:
            continue
        values: dict[str, str | Sequence[str]] = {
            "status": fill.status,
            "evidence": merge_evidence(requirement.evidence, fill.evidence),
            "notes": fill.notes,
        }
        edits += _mapping_edits(text, node, values, eol)
    filled = _apply(text, edits)
    _verify(checklist, filled, fills, metadata)
    return filled


def _verify(original: Checklist, filled: str, fills: Mapping[str, Fill], metadata: Mapping[str, str]) -> None:
    """The filled text parses to the input plus exactly the intended values."""
    result = parse_checklist(filled, original.source)
    for before, after in zip(original.requirements, result.requirements, strict=True):
        fill = fills.get(before.id)
        expected = before
        if fill is not None:
            expected = Requirement(
                before.section,
                before.id,
                before.description,
                before.level,
                fill.status,
                merge_evidence(before.evidence, fill.evidence),
                fill.notes,
            )
        if after != expected:
            raise ChecklistError(f"internal error: filling {before.id} produced {after}")
    wanted = {**original.metadata, **metadata}
    if dict(result.metadata) != wanted:
        raise ChecklistError("internal error: metadata did not come out as written")
