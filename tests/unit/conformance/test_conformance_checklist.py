"""Loading and filling the AI-conformance checklist: only the values the suite owns change, byte for byte.

The fixtures under tests/fixtures/conformance/ have the upstream files' shape (1.33 to 1.37, with and
without dra_support) in the project's own wording, plus one written with YAML's less common forms.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver.conformance.checklist import (
    ChecklistError,
    Fill,
    check_metadata,
    fill_checklist,
    load_checklist,
    parse_checklist,
)
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")
COVERED = (
    "dra_support",
    "driver_runtime_management",
    "gpu_sharing",
    "accelerator_metrics",
    "secure_accelerator_access",
)
_ID_RE = re.compile(r"^\s*-\s*(?:\{\s*)?id:\s*([A-Za-z0-9_]+)")
_FIELD_RE = re.compile(r"^(\s*)(status|evidence|notes):")
_META_RE = re.compile(r"^(\s+)([A-Za-z][A-Za-z0-9_]*):")


def fixture(name: str) -> Path:
    return FIXTURES / name


def owned_lines_removed(text: str, covered: set[str], metadata: set[str]) -> str:
    """The text minus what filling may change: the status/evidence/notes entries (with their continuation
    lines) of covered requirements, and the supplied metadata entries. Written independently of the
    writer, by indentation only."""
    kept: list[str] = []
    current, in_metadata, owned_indent = "", False, None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if owned_indent is not None and stripped and indent > owned_indent:
            continue  # continuation of an owned value (block list item, block scalar line)
        owned_indent = None
        if line.startswith("metadata:"):
            in_metadata = True
        elif line[:1].isalpha():
            in_metadata = False
        if match := _ID_RE.match(line):
            current = match[1]
        field = _FIELD_RE.match(line)
        meta = _META_RE.match(line) if in_metadata else None
        if (field and current in covered) or (meta and meta[2] in metadata):
            owned_indent = indent
            continue
        kept.append(line)
    return "".join(kept)


def some_fills(checklist_ids: list[str]) -> dict[str, Fill]:
    statuses = ["Implemented", "Not Implemented", "Partially Implemented", "N/A"]
    return {
        rid: Fill(
            statuses[i % 4],
            (f"file://results/junit.xml#T{i}", f"file://results/e2e.log#L{i}-L{i + 3}"),
            f'note {i}: it\'s "done"',
        )
        for i, rid in enumerate(r for r in COVERED if r in checklist_ids)
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_fixtures_load_with_their_requirements_in_order(version: str) -> None:
    checklist = load_checklist(str(fixture(f"checklist-{version}.yaml")))
    ids = [r.id for r in checklist.requirements]
    assert checklist.kubernetes_version == f"v{version}"
    assert ("dra_support" in ids) == (version in ("1.33", "1.34", "1.35"))
    assert ("workload_sandboxing" in ids) == (version == "1.37")
    assert ids.index("secure_accelerator_access") > ids.index("accelerator_metrics")
    levels = {r.id: r.level for r in checklist.requirements}
    assert levels["secure_accelerator_access"] == "MUST"
    if "dra_support" in levels:
        assert levels["dra_support"] == ("SHOULD" if version == "1.33" else "MUST")
    assert set(checklist.placeholders()) >= {"platformName", "vendorName"}


@pytest.mark.parametrize("name", [f"checklist-{v}.yaml" for v in VERSIONS] + ["checklist-formatting.yaml"])
def test_filling_changes_only_the_owned_values(name: str) -> None:
    checklist = load_checklist(str(fixture(name)))
    fills = some_fills([r.id for r in checklist.requirements])
    metadata = {"platformName": "Example Platform", "k8sConformanceUrl": "https://example.com/x"}
    filled = fill_checklist(checklist, fills, metadata)

    before = owned_lines_removed(checklist.text, set(fills), set(metadata))
    after = owned_lines_removed(filled, set(fills), set(metadata))
    assert after == before  # every other byte, comments and blank lines included, is unchanged
    result = parse_checklist(filled)
    for original, now in zip(checklist.requirements, result.requirements, strict=True):
        assert (now.section, now.id, now.description, now.level) == (
            original.section,
            original.id,
            original.description,
            original.level,
        )
        fill = fills.get(original.id)
        if fill is None:
            assert now == original
        else:
            assert (now.status, now.notes) == (fill.status, fill.notes)
            assert now.evidence == (*original.evidence, *fill.evidence)
    assert result.metadata["platformName"] == "Example Platform"
    assert result.metadata["k8sConformanceUrl"] == "https://example.com/x"


def test_descriptions_keep_their_exact_text_in_every_style() -> None:
    checklist = load_checklist(str(fixture("checklist-formatting.yaml")))
    filled = fill_checklist(checklist, some_fills([r.id for r in checklist.requirements]))
    for line in checklist.text.splitlines():
        if "description:" in line or line.startswith("#") or line.strip().startswith(("Folded", "several")):
            assert line in filled.splitlines()
    # a hand-written evidence entry is kept ahead of the suite's
    (dra,) = [r for r in parse_checklist(filled).requirements if r.id == "dra_support"]
    assert dra.evidence[0] == "https://docs.example.com/dra"


def test_filling_twice_gives_the_same_document() -> None:
    checklist = load_checklist(str(fixture("checklist-1.35.yaml")))
    fills = some_fills([r.id for r in checklist.requirements])
    once = fill_checklist(checklist, fills)
    assert fill_checklist(parse_checklist(once), fills) == once


def test_crlf_documents_stay_crlf() -> None:
    text = fixture("checklist-1.36.yaml").read_text().replace("\n", "\r\n")
    checklist = parse_checklist(text)
    filled = fill_checklist(
        checklist, some_fills([r.id for r in checklist.requirements]), {"vendorName": "V"}
    )
    assert "\n" not in filled.replace("\r\n", "")
    assert owned_lines_removed(filled, set(COVERED), {"vendorName"}) == owned_lines_removed(
        text, set(COVERED), {"vendorName"}
    )


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=80))
def test_any_double_quoted_description_survives(description: str) -> None:
    text = (
        "metadata:\n  kubernetesVersion: v1.36\nspec:\n  security:\n"
        f"    - id: secure_accelerator_access\n      description: {json.dumps(description, ensure_ascii=False)}\n"
        '      level: MUST\n      status: ""\n      evidence: []\n      notes: ""\n'
    )
    filled = fill_checklist(
        parse_checklist(text), {"secure_accelerator_access": Fill("Implemented", ("file://x",), "n")}
    )
    assert filled.splitlines()[5] == text.splitlines()[5]
    assert parse_checklist(filled).requirements[0].description == description


def test_placeholder_metadata_is_refused() -> None:
    checklist = load_checklist(str(fixture("checklist-1.37.yaml")))
    with pytest.raises(ChecklistError, match=r"platformName: '\[My Platform\]' is a \[placeholder\]"):
        fill_checklist(checklist, {}, {"platformName": "[My Platform]"})
    assert check_metadata({"vendorName": " ", "bad key": "x"}) == [
        "metadata vendorName: the value must be a non-empty string",
        "metadata key 'bad key' is not a plain identifier",
    ]


def test_fill_values_are_checked() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Fill("Done")
    with pytest.raises(ValueError, match="N/A needs notes"):
        Fill("N/A", (), " ")
    checklist = load_checklist(str(fixture("checklist-1.36.yaml")))
    with pytest.raises(ChecklistError, match="no requirement dra_support"):
        fill_checklist(checklist, {"dra_support": Fill("Implemented")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list\n", "not a mapping"),
        ("metadata: {}\n", "no 'spec' mapping"),
        ("metadata: {}\nspec:\n  a:\n    - id: x\n      description: d\n      level: MAY\n", "level 'MAY'"),
        ("metadata: {}\nspec:\n  a:\n    - id: x\n      level: MUST\n", "'description' must be"),
        ("metadata: {}\nspec:\n  a: []\n", "lists no requirements"),
        ("metadata: {}\nspec: [\n", "not valid YAML"),
    ],
)
def test_what_is_not_a_checklist_says_why(text: str, message: str) -> None:
    with pytest.raises(ChecklistError, match=message):
        parse_checklist(text, "bad.yaml")


def test_missing_files_and_urls_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ChecklistError, match="cannot read checklist"):
        load_checklist(str(tmp_path / "nope.yaml"))


@pytest.fixture
def served() -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = partial(Quiet, directory=str(FIXTURES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_checklist_loads_from_a_url(served: str) -> None:
    from_url = load_checklist(f"{served}/checklist-1.37.yaml")
    assert from_url.text == fixture("checklist-1.37.yaml").read_text()
    with pytest.raises(ChecklistError, match="cannot fetch checklist"):
        load_checklist(f"{served}/missing.yaml")
