"""Write scenarios for an API server, and the answers compared with a recorded verdict.

A scenario (tests/fixtures/upstream-cases/validation.json, or one made by tests/support/apigen.py) is a
sequence of writes of one ``resource.k8s.io/v1`` object: ``create``, then ``update`` or ``status`` (the
status subresource). What counts is the answer to the last step: its HTTP code, its Status reason, its
causes as (type, field) pairs, and the object the server stored (without what only the server makes up:
uid, resourceVersion, creation time, managed fields). The earlier steps must succeed as recorded.

Both the sandbox API server and a real kube-apiserver are driven through :func:`run_case`, over HTTP, so
the differential test and the upstream-case test compare the same things.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

JSON = dict[str, Any]
CASES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream-cases" / "validation.json"
GROUP_PATH = "/apis/resource.k8s.io/v1"
PLURALS = {
    "ResourceSlice": ("resourceslices", False),
    "DeviceClass": ("deviceclasses", False),
    "ResourceClaim": ("resourceclaims", True),
    "ResourceClaimTemplate": ("resourceclaimtemplates", True),
}
# Metadata only the server makes up; never part of a comparison.
SERVER_MADE = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink")
# The recorded verdicts ran with a fixed clock; any valid time we store at these places stands for it.
FAKE_NOW = "2000-01-01T00:00:00Z"

Send = Callable[[str, str, JSON], Awaitable[tuple[int, JSON]]]


@asynccontextmanager
async def http_sender(base_url: str, context: ssl.SSLContext | None = None) -> AsyncIterator[Send]:
    """A :data:`Send` over HTTP(S) to an API server: (code, decoded answer) for a JSON body."""
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def send(method: str, path: str, body: JSON) -> tuple[int, JSON]:
            headers = {"Content-Type": "application/json"}
            # Compact UTF-8, as client-go and kubectl send it: the server counts raw bytes of opaque parameters.
            data = (
                None
                if method in ("GET", "DELETE") and not body
                else json.dumps(body, separators=(",", ":"), ensure_ascii=False)
            )
            async with session.request(method, path, data=data, headers=headers) as response:
                answer: JSON = await response.json(content_type=None)
                return response.status, answer

        yield send


async def remove_objects(case: JSON, send: Send, created: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Delete what a case created (finalizers first), so that the next case starts from nothing."""
    names = {(expand(step["object"]).get("metadata") or {}).get("name") for step in case["steps"]} | created
    for name in sorted(n for n in names if n):
        path = resource_path(case["kind"], case["namespace"], name)
        code, current = await send("GET", path, {})
        if code != 200:
            continue
        if current["metadata"].get("finalizers"):
            current["metadata"]["finalizers"] = []
            await send("PUT", path, current)
        await send("DELETE", path, {})


def load() -> JSON:
    data: JSON = json.loads(CASES.read_text())
    return data


DOC = Path(__file__).resolve().parents[2] / "docs" / "sandbox-apiserver.md"


def listed_differences() -> dict[str, str]:
    """Upstream scenario id -> why the sandbox answers differently, from docs/sandbox-apiserver.md."""
    rows = re.findall(r"^\| `(upstream/[^`]+)` \| (.+?) \|$", DOC.read_text(), re.MULTILINE)
    return dict(rows)


def expand(value: Any) -> Any:
    """Resolve the compact forms of the case file: ``{$rep: [prefix, char, count, suffix]}`` and
    ``{$items: {item, names, except}}`` (copies of ``item`` named after ``names``)."""
    if isinstance(value, list):
        return [expand(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$rep" in value:
        prefix, char, count, suffix = value["$rep"]
        return f"{prefix}{char * count}{suffix}"
    if "$items" in value:
        spec = value["$items"]
        items = []
        for i, name in enumerate(spec["names"]):
            item = expand(spec["except"].get(str(i), spec["item"]))
            items.append({**item, "name": name})
        return items
    return {key: expand(item) for key, item in value.items()}


@dataclass
class Answer:
    code: int
    reason: str = ""
    causes: list[tuple[str, str]] = field(default_factory=list)
    stored: JSON | None = None
    setup: list[int] = field(default_factory=list)
    created: set[str] = field(default_factory=set)  # names the server gave what it created

    def summary(self) -> JSON:
        return {
            "code": self.code,
            "reason": self.reason,
            "causes": sorted(set(self.causes)),
            "stored": self.stored,
            "setup": self.setup,
        }


def resource_path(kind: str, namespace: str, name: str | None = None, status: bool = False) -> str:
    plural, namespaced = PLURALS[kind]
    path = f"{GROUP_PATH}/namespaces/{namespace}/{plural}" if namespaced else f"{GROUP_PATH}/{plural}"
    if name is not None:
        path += f"/{name}"
    return path + "/status" if status else path


def strip_server_made(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_MADE:
            meta.pop(key, None)
    return out


def _request(step: JSON, kind: str, namespace: str) -> tuple[str, str, JSON]:
    body = expand(step["object"])
    if step["op"] == "create":
        return "POST", resource_path(kind, namespace), body
    name = (body.get("metadata") or {}).get("name") or "-"
    return "PUT", resource_path(kind, namespace, name, status=step["op"] == "status"), body


async def run_case(case: JSON, send: Send) -> Answer:
    """Send the case's steps; the answer to the last one, with the codes of those before."""
    setup: list[int] = []
    created: set[str] = set()
    steps = case["steps"]
    for step in steps:
        code, body = await send(*_request(step, case["kind"], case["namespace"]))
        if code == 201:
            created.add(str((body.get("metadata") or {}).get("name")))
        setup.append(code)
    answer = Answer(setup.pop(), setup=setup, created=created)
    if body.get("kind") == "Status":
        answer.reason = str(body.get("reason", ""))
        causes = (body.get("details") or {}).get("causes") or []
        answer.causes = [(c.get("reason", ""), c.get("field", "")) for c in causes]
    else:
        answer.stored = strip_server_made(body)
    return answer


def apply_patch(obj: JSON, patch: list[list[Any]]) -> JSON:
    """The recorded stored form: ``obj`` with the case's ``[set|del, path, value]`` operations applied."""
    out = copy.deepcopy(obj)
    for op, path, value in patch:
        parent: Any = out
        for part in path[:-1]:
            parent = parent[part]
        if op == "set":
            if isinstance(parent, list) and path[-1] == len(parent):
                parent.append(value)
            else:
                parent[path[-1]] = value
        elif isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            del parent[path[-1]]
    return out


def _is_time(value: Any) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def fake_times(stored: JSON, expected: JSON) -> JSON:
    """``stored`` with every valid time the recorded form has as :data:`FAKE_NOW` set to it too."""

    def walk(ours: Any, theirs: Any) -> Any:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            return {k: walk(v, theirs.get(k)) for k, v in ours.items()}
        if isinstance(ours, list) and isinstance(theirs, list):
            return [walk(o, t) for o, t in zip(ours, theirs, strict=False)] + ours[len(theirs) :]
        if theirs == FAKE_NOW and _is_time(ours):
            return FAKE_NOW
        return ours

    result: JSON = walk(stored, expected)
    return result


def expected_answer(case: JSON) -> Answer:
    """The recorded verdict in the form :func:`run_case` answers."""
    oracle = case["oracle"]
    answer = Answer(oracle["code"], setup=list(oracle.get("setup") or []))
    answer.reason = oracle.get("reason", "")
    answer.causes = [tuple(c) for c in oracle.get("causes") or []]  # type: ignore[misc]
    if "stored" in oracle:
        last = expand(case["steps"][-1]["object"])
        answer.stored = strip_server_made(apply_patch(last, oracle["stored"]))
    return answer


def json_diff(got: Any, want: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, one line per place."""
    if isinstance(got, dict) and isinstance(want, dict):
        out = []
        for key in sorted(set(got) | set(want)):
            where = f"{path}.{key}"
            if key not in got:
                out.append(f"{where}: missing, want {json.dumps(want[key])[:120]}")
            elif key not in want:
                out.append(f"{where}: got {json.dumps(got[key])[:120]}, want nothing")
            else:
                out.extend(json_diff(got[key], want[key], where))
        return out
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [
            line
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for line in json_diff(g, w, f"{path}[{i}]")
        ]
    if got != want:
        return [f"{path}: got {json.dumps(got)[:120]}, want {json.dumps(want)[:120]}"]
    return []


def compare(case: JSON, got: Answer) -> list[str]:
    """How ``got`` differs from the case's recorded verdict (empty when it agrees)."""
    want = expected_answer(case)
    if want.stored is not None and got.stored is not None:
        got.stored = fake_times(got.stored, want.stored)
    differences = []
    mine, theirs = got.summary(), want.summary()
    for key in ("code", "reason", "causes", "setup", "stored"):
        if key == "stored" and want.stored is None:
            continue
        if key == "stored" and got.stored is not None:
            differences.extend(f"stored{line}" for line in json_diff(got.stored, want.stored))
        elif mine[key] != theirs[key]:
            differences.append(f"{key}: got {json.dumps(mine[key])}, want {json.dumps(theirs[key])}")
    return differences


def _same_times(a: Any, b: Any) -> tuple[Any, Any]:
    """``a`` and ``b`` with the times both hold at the same place set to :data:`FAKE_NOW` (each server
    stamps its own clock)."""
    if isinstance(a, dict) and isinstance(b, dict):
        pairs = {k: _same_times(a[k], b[k]) for k in a.keys() & b.keys()}
        return {k: pairs[k][0] if k in pairs else v for k, v in a.items()}, {
            k: pairs[k][1] if k in pairs else v for k, v in b.items()
        }
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs_list = [_same_times(x, y) for x, y in zip(a, b, strict=True)]
        return [x for x, _ in pairs_list], [y for _, y in pairs_list]
    if _is_time(a) and _is_time(b):
        return FAKE_NOW, FAKE_NOW
    return a, b


def _generated_name(stored: JSON | None) -> JSON | None:
    meta = (stored or {}).get("metadata") or {}
    if stored is None or not meta.get("generateName"):
        return stored
    out = copy.deepcopy(stored)
    name = str(meta.get("name", ""))
    out["metadata"]["name"] = f"{meta['generateName']}<{len(name) - len(meta['generateName'])} random>"
    return out


def compare_answers(sandbox: Answer, real: Answer) -> list[str]:
    """How the sandbox's answer differs from the real server's: code, reason, causes (type and field), the
    codes of the earlier steps and the stored form."""
    differences = []
    mine, theirs = sandbox.summary(), real.summary()
    for key in ("code", "reason", "causes", "setup"):
        if mine[key] != theirs[key]:
            differences.append(f"{key}: sandbox {json.dumps(mine[key])}, real {json.dumps(theirs[key])}")
    if sandbox.stored is not None and real.stored is not None:
        ours, theirs_stored = _same_times(_generated_name(sandbox.stored), _generated_name(real.stored))
        differences.extend(f"stored{line}" for line in json_diff(ours, theirs_stored))
    return differences
