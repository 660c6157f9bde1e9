"""The prepared-devices gauge counts what prepare and unprepare recorded, without touching the checkpoint
file: loading it outside the node lock could rebuild or rewrite it under another instance's feet."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from driver.plugin.app import _PreparedDevicesGauge
from driver.plugin.metrics import PluginMetrics
from driver.state.checkpoint import CHECKPOINT_FILE
from tests.unit.state.test_prepare import DRIVER, GPU0, GPU1, GPU2, Node, claim, node, prepare, ref

__all__ = ["node"]  # fixture


def gauge(metrics: PluginMetrics) -> float:
    text = metrics.render("")[0].decode()
    (value,) = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "accel_dra_plugin_prepared_devices"
    ]
    return value


def test_the_gauge_follows_prepare_and_unprepare(node: Node) -> None:
    p = node.preparer()
    metrics = PluginMetrics(DRIVER)
    operations = _PreparedDevicesGauge(metrics, p)
    prepare(p, claim("a1", GPU0, GPU1), claim("b1", GPU2))
    operations.observe("prepare", "success", 0.001)
    assert gauge(metrics) == 3
    p.unprepare_sync([ref(claim("a1"))])
    operations.observe("unprepare", "success", 0.001)
    assert gauge(metrics) == 1


def test_refreshing_the_gauge_never_reads_or_writes_the_checkpoint(node: Node) -> None:
    p = node.preparer()
    metrics = PluginMetrics(DRIVER)
    prepare(p, claim("a1", GPU0))
    plugin_dir = node.root / "plugin"
    (plugin_dir / CHECKPOINT_FILE).write_text("garbage")  # found corrupt by the next locked operation
    before = sorted(f.name for f in plugin_dir.iterdir())
    _PreparedDevicesGauge(metrics, p).observe("prepare", "success", 0.001)
    assert sorted(f.name for f in plugin_dir.iterdir()) == before
    assert (plugin_dir / CHECKPOINT_FILE).read_text() == "garbage"
    assert gauge(metrics) == 1
