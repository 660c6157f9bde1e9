"""GPU-seconds allocated and used: each device charged once, MIG devices by their share, restarts as resets."""

from __future__ import annotations

import pytest

from driver.devices.fake import load_named_profile
from driver.exporter.attribution import Consumer, ConsumerShare
from driver.exporter.chargeback import Chargeback, device_shares, gpu_memory

DRIVER = "gpu.accel-dra.dev"
INVENTORY = load_named_profile("dgx-h100-mig").inventory
WHOLE, MIG_GPU = INVENTORY.gpus[0], INVENTORY.gpus[7]
BIG = MIG_GPU.mig_devices[0]  # 3g.40gb
MODEL = "NVIDIA H100 80GB HBM3"


def row(
    pod: str,
    util: float | None,
    mode: str,
    *,
    mig: str = "",
    claim: str = "c",
    cls: str = "gpu",
    share: int | None = None,
) -> ConsumerShare:
    consumer = Consumer(
        "ns",
        pod,
        "main",
        "ns",
        claim,
        DRIVER,
        "node-1",
        "dev",
        mig_uuid=mig,
        device_class=cls,
        share_memory_bytes=share,
    )
    return ConsumerShare(consumer, util, mode, None, mode)


def totals(charge: Chargeback) -> dict[str, tuple[float, float]]:
    return {c.key[1]: (c.allocated_seconds, c.used_seconds) for c in charge.charges()}


def test_device_shares() -> None:
    share_of = device_shares(INVENTORY)
    assert share_of(WHOLE.uuid, "") == 1.0
    assert BIG.memory_bytes and MIG_GPU.memory_bytes
    assert share_of(MIG_GPU.uuid, BIG.uuid) == pytest.approx(BIG.memory_bytes / MIG_GPU.memory_bytes)
    assert share_of("GPU-unknown", "") == 1.0 and share_of(MIG_GPU.uuid, "MIG-unknown") == 0.0


def test_exclusive_process_and_shared_rows() -> None:
    charge = Chargeback(device_shares(INVENTORY))
    rounds = [
        (WHOLE.uuid, MODEL, (row("solo", 0.5, "exclusive"),)),
        # Split by process: each pod's own use.
        (INVENTORY.gpus[1].uuid, MODEL, (row("p1", 0.3, "process"), row("p2", 0.1, "process"))),
        # Shared, not splittable: held and used split evenly.
        (INVENTORY.gpus[2].uuid, MODEL, (row("s1", 0.8, "shared"), row("s2", 0.8, "shared"))),
        # A MIG device: its share of the GPU; no utilization reading: no used time, not zero use.
        (
            MIG_GPU.uuid,
            MODEL,
            (row("m", 0.5, "exclusive", mig=BIG.uuid), row("n", None, "exclusive", mig="MIG-x")),
        ),
    ]
    charge.advance(100.0, 0.0, rounds)  # the first round counts no time
    charge.advance(110.0, 10.0, rounds)
    share = BIG.memory_bytes / MIG_GPU.memory_bytes  # type: ignore[operator]
    assert totals(charge) == {
        "solo": (10.0, 5.0),
        "p1": (5.0, pytest.approx(3.0)),  # held: one device, two holders
        "p2": (5.0, pytest.approx(1.0)),
        "s1": (5.0, 4.0),
        "s2": (5.0, 4.0),
        "m": (pytest.approx(10 * share), pytest.approx(5 * share)),
        "n": (0.0, 0.0),
    }


def test_one_pod_through_two_claims_is_charged_once_per_device() -> None:
    charge = Chargeback(device_shares(INVENTORY))
    # split() gives a container with two rows on one device half of its value (0.3) on each.
    rows = (row("p", 0.15, "exclusive", claim="a"), row("p", 0.15, "exclusive", claim="b"))
    charge.advance(0.0, 60.0, [(WHOLE.uuid, MODEL, rows)])
    assert [(c.key[3], c.allocated_seconds, c.used_seconds) for c in charge.charges()] == [
        ("a", 30.0, pytest.approx(9.0)),
        ("b", 30.0, pytest.approx(9.0)),
    ]


def test_released_keys_are_kept_for_the_retention_then_dropped() -> None:
    charge = Chargeback(device_shares(INVENTORY), retention=300.0)
    charge.advance(0.0, 1.0, [(WHOLE.uuid, MODEL, (row("gone", 1.0, "exclusive"),))])
    charge.advance(200.0, 1.0, [(WHOLE.uuid, MODEL, ())])
    assert totals(charge) == {"gone": (1.0, 1.0)}  # still served: Prometheus scrapes its final value
    charge.advance(301.0, 1.0, [(WHOLE.uuid, MODEL, ())])
    assert totals(charge) == {}
    # Coming back later starts from 0: a counter reset, which increase() handles.
    charge.advance(302.0, 2.0, [(WHOLE.uuid, MODEL, (row("gone", 1.0, "exclusive"),))])
    assert totals(charge) == {"gone": (2.0, 2.0)}


def test_labels_name_namespace_pod_claim_class_and_model() -> None:
    charge = Chargeback(device_shares(INVENTORY))
    charge.advance(0.0, 1.0, [(WHOLE.uuid, MODEL, (row("p", 1.0, "exclusive", cls="gpu.accel-dra.dev"),))])
    (only,) = charge.charges()
    assert only.key == ("ns", "p", "ns", "c", "gpu.accel-dra.dev", MODEL)


def test_shares_of_a_gpu_shared_by_memory_pay_for_their_memory() -> None:
    assert WHOLE.memory_bytes
    quarter = WHOLE.memory_bytes // 4
    charge = Chargeback(device_shares(INVENTORY), memory_of=gpu_memory(INVENTORY))
    rows = (
        row("a", 0.4, "process", claim="a", share=quarter),
        # One claim, two containers: its quarter split between them.
        row("b1", 0.1, "process", claim="b", share=quarter),
        row("b2", 0.1, "process", claim="b", share=quarter),
    )
    charge.advance(0.0, 100.0, [(WHOLE.uuid, MODEL, rows)])
    assert totals(charge) == {
        "a": (pytest.approx(25.0), pytest.approx(40.0)),  # used: its own use of the GPU, measured
        "b1": (pytest.approx(12.5), pytest.approx(10.0)),
        "b2": (pytest.approx(12.5), pytest.approx(10.0)),
    }
    # Without the GPU's memory the split falls back to even rows.
    blind = Chargeback(device_shares(INVENTORY))
    blind.advance(0.0, 90.0, [(WHOLE.uuid, MODEL, rows)])
    assert {k: v[0] for k, v in totals(blind).items()} == {"a": 30.0, "b1": 30.0, "b2": 30.0}
