"""An idle plugin sends the API server nothing: no polling, no periodic re-list, no status heartbeat.

node-2's plugin is idle from the moment its watches are open until node-2 goes into service (see
conftest.py); the other tests run meanwhile, so the 60 s window mostly costs nothing.
"""

from __future__ import annotations

import pytest

from tests.realk8s.conftest import IdleReport
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import describe_requests, plugin_requests

pytestmark = pytest.mark.realk8s


def test_the_plugin_sends_no_request_in_a_minute_of_idle(realk8s: Cluster, idle_report: IdleReport) -> None:
    window, requests = idle_report.window, idle_report.requests
    before = [
        e for e in plugin_requests(realk8s.audit_events(), window.node) if e["stage"] == "ResponseComplete"
    ]
    assert before, "the audit log shows no request of the plugin at all: the filter would see nothing"
    assert requests == [], (
        f"{len(requests)} request(s) between {window.start} and {window.end}:\n" + describe_requests(requests)
    )
