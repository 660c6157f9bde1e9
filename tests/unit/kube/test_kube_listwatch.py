"""The one list/watch helper (driver.kube.listwatch) against a scripted API server and a fake clock:
resourceVersion handling, bookmarks, 410 Gone, backoff, Retry-After, and failures that never end the loop.
The end-to-end behaviour (real watch streams, a real API server) is covered where its users are tested:
the publisher, the health clear requests, the exporter's indexes and the sandbox controllers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from driver.kube.client import NODES, ApiError, WatchEvent
from driver.kube.listwatch import ListWatcher
from driver.kube.retry import Backoff

JSON = dict[str, Any]


class ScriptEnd(BaseException):
    """The script ran out: ends the otherwise endless loop (not an Exception, so it is not retried)."""


def node(name: str, version: str) -> JSON:
    return {"metadata": {"name": name, "resourceVersion": version}}


def listing(version: str, *names: str) -> JSON:
    return {"metadata": {"resourceVersion": version}, "items": [node(n, version) for n in names]}


def gone() -> ApiError:
    return ApiError(410, "Expired", "too old resource version")


@dataclass
class ScriptedKube:
    """Answers each list and each watch with the next step of its script: a value or an exception (a
    watch step is a list of events, optionally ending in an exception)."""

    lists: list[Any] = field(default_factory=list)
    watches: list[list[Any]] = field(default_factory=list)
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    async def list(self, rt: Any, namespace: Any = None, **kw: Any) -> JSON:
        self.calls.append(("list", None))
        if not self.lists:
            raise ScriptEnd
        step = self.lists.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[no-any-return]

    async def watch(self, rt: Any, namespace: Any = None, **kw: Any) -> AsyncIterator[WatchEvent]:
        self.calls.append(("watch", kw.get("resource_version")))
        if not self.watches:
            raise ScriptEnd
        for step in self.watches.pop(0):
            if isinstance(step, BaseException):
                raise step
            yield step


@dataclass
class Recorder:
    events: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def listed(self, items: list[JSON]) -> None:
        self.events.append(("LIST", ",".join(i["metadata"]["name"] for i in items)))

    def changed(self, event_type: str, obj: JSON) -> None:
        self.events.append((event_type, obj["metadata"]["name"]))

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def run(kube: ScriptedKube, rec: Recorder, **kw: Any) -> ListWatcher:
    watcher = ListWatcher(
        kube,  # type: ignore[arg-type]
        NODES,
        on_list=kw.pop("on_list", rec.listed),
        on_event=kw.pop("on_event", rec.changed),
        on_error=lambda err: rec.errors.append(str(err)),
        backoff=Backoff(base=0.2, cap=1.0),
        sleep=rec.sleep,
        **kw,
    )
    with pytest.raises(ScriptEnd):
        await watcher.run()
    return watcher


async def test_lists_then_watches_from_the_list_version_and_resumes_after_the_last_event() -> None:
    kube = ScriptedKube(
        lists=[listing("10", "a", "b")],
        watches=[
            [WatchEvent("MODIFIED", node("a", "11")), WatchEvent("BOOKMARK", node("", "15"))],
            [WatchEvent("DELETED", node("b", "16"))],
        ],
    )
    rec = Recorder()
    watcher = await run(kube, rec)
    assert rec.events == [("LIST", "a,b"), ("MODIFIED", "a"), ("DELETED", "b")]  # no bookmark handed on
    # A stream the server ends is resumed from the bookmark's version, without a list.
    assert kube.calls == [("list", None), ("watch", "10"), ("watch", "15"), ("watch", "16")]
    assert rec.waits == [] and watcher.lists == 1


async def test_410_gone_lists_again_at_once_and_a_second_in_a_row_backs_off() -> None:
    kube = ScriptedKube(
        lists=[listing("10", "a"), listing("20", "a"), listing("30", "a")],
        watches=[[gone()], [gone()], [WatchEvent("ADDED", node("c", "31")), gone()]],
    )
    rec = Recorder()
    await run(kube, rec)
    assert kube.calls == [
        ("list", None),
        ("watch", "10"),
        ("list", None),  # at once
        ("watch", "20"),
        ("list", None),  # after a wait: a server that answers 410 to a fresh version is not well
        ("watch", "30"),
        ("list", None),  # the stream delivered an event: a 410 then relists at once again
    ]
    assert rec.waits == [0.2]
    assert len(rec.errors) == 3


async def test_failures_back_off_exponentially_honour_retry_after_and_reset_after_events() -> None:
    busy = ApiError(429, "TooManyRequests", "slow down", retry_after=0.9)
    kube = ScriptedKube(
        lists=[ApiError(500, "InternalError", "x"), OSError("reset"), busy, listing("5", "a"), listing("6")],
        watches=[[WatchEvent("ADDED", node("b", "6")), ApiError(500, "InternalError", "stream broke")]],
    )
    rec = Recorder()
    await run(kube, rec)
    # 0.2, 0.4, then the server's 0.9 (more than the 0.8 due); after an event the count starts over.
    assert rec.waits == [0.2, 0.4, 0.9, 0.2]
    assert rec.events == [("LIST", "a"), ("ADDED", "b"), ("LIST", "")]
    assert "reset" in rec.errors[1]


async def test_a_callback_that_raises_lists_again_later_instead_of_ending_the_loop() -> None:
    kube = ScriptedKube(lists=[listing("1", "a"), listing("2", "a")], watches=[])
    rec = Recorder()
    calls = 0

    def flaky(items: list[JSON]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("surprise")
        rec.listed(items)

    await run(kube, rec, on_list=flaky)
    assert rec.events == [("LIST", "a")] and rec.waits == [0.2]
    assert kube.calls[:3] == [("list", None), ("list", None), ("watch", "2")]


async def test_a_stream_that_ends_without_any_event_is_resumed_after_a_wait() -> None:
    """A proxy that closes every watch at once must not turn the loop into a busy one."""
    kube = ScriptedKube(lists=[listing("7")], watches=[[], [], []])
    rec = Recorder()
    await run(kube, rec)
    assert kube.calls == [("list", None), ("watch", "7"), ("watch", "7"), ("watch", "7"), ("watch", "7")]
    assert rec.waits == [0.2, 0.4, 0.8]


async def test_async_callbacks_are_awaited() -> None:
    kube = ScriptedKube(lists=[listing("1", "a")], watches=[[WatchEvent("ADDED", node("b", "2"))]])
    rec = Recorder()
    seen: list[str] = []

    async def on_event(event_type: str, obj: JSON) -> None:
        seen.append(obj["metadata"]["name"])

    await run(kube, rec, on_event=on_event)
    assert seen == ["b"]


async def test_watches_that_fail_right_after_good_lists_keep_backing_off() -> None:
    """A proxy that breaks every stream: the good lists in between do not reset the wait."""
    broken = ApiError(500, "InternalError", "stream broke")
    kube = ScriptedKube(lists=[listing("1", "a")] * 3, watches=[[broken], [broken], [broken]])
    rec = Recorder()
    await run(kube, rec)
    assert rec.waits == [0.2, 0.4, 0.8]


async def test_a_good_list_after_failed_lists_starts_the_count_over() -> None:
    down = OSError("connection refused")
    kube = ScriptedKube(
        lists=[down, down, listing("1", "a"), listing("2", "a")],
        watches=[[ApiError(500, "InternalError", "stream broke")]],
    )
    rec = Recorder()
    await run(kube, rec)
    assert rec.waits == [0.2, 0.4, 0.2]
