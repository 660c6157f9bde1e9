"""Health state transitions (event -> record -> device view) and the per-GPU view the exporter shows."""

from __future__ import annotations

from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from driver.devices.events import (
    Cleared,
    HealthEvent,
    LostEvent,
    Monitored,
    ProbeNow,
    ProbeOk,
    Unmonitored,
    XidEvent,
)
from driver.devices.fake import load_named_profile
from driver.devices.model import Device
from driver.health.state import (
    HealthState,
    Policy,
    apply,
    clear_targets,
    device_health,
    gpu_health,
)

INVENTORY = load_named_profile("dgx-h100").inventory
DEVICE = INVENTORY.devices[0]
UUID = DEVICE.uuid
MIG_INVENTORY = load_named_profile("mig-a100").inventory
MIG_DEVICE = next(d for d in MIG_INVENTORY.devices if d.mig is not None)
PROBE = Policy(recovery="probe", recovery_probes=3)


def run(events: list[HealthEvent], policy: Policy = PROBE, state: HealthState | None = None) -> HealthState:
    return reduce(lambda s, e: apply(s, e, policy, now=1_700_000_000.0), events, state or HealthState())


def view(state: HealthState, device: Device = DEVICE, policy: Policy = PROBE) -> tuple[str, int | None, bool]:
    health = device_health(state, device, policy)
    return health.status, health.xid, health.xid_fatal


def test_a_fatal_xid_makes_the_device_unhealthy_with_a_reason() -> None:
    state = run([XidEvent(UUID, 79)])
    assert view(state) == ("unhealthy", 79, True)
    message = device_health(state, DEVICE, PROBE).message
    assert message.startswith("XID 79 (GPU has fallen off the bus) at 2023-11-14T22:13:20Z: fatal")
    assert "until an operator clears it" in message


def test_an_ignorable_xid_is_recorded_but_healthy() -> None:
    state = run([XidEvent(UUID, 13)])
    assert view(state) == ("healthy", 13, False)
    assert device_health(state, DEVICE, PROBE).message.endswith("ignorable")


def test_an_ignorable_xid_never_hides_a_fatal_one_but_a_new_fatal_one_replaces_it() -> None:
    assert view(run([XidEvent(UUID, 79), XidEvent(UUID, 13)])) == ("unhealthy", 79, True)
    assert view(run([XidEvent(UUID, 13), XidEvent(UUID, 48)])) == ("unhealthy", 48, True)
    assert view(run([XidEvent(UUID, 79), XidEvent(UUID, 94)])) == ("unhealthy", 94, True)
    assert run([XidEvent(UUID, 79), XidEvent(UUID, 13)]).record(UUID).xid_events == 2


def test_a_lost_gpu_recovers_after_enough_passing_probes_in_a_row() -> None:
    lost = run([LostEvent(UUID, "GPU is lost")])
    assert view(lost)[0] == "unhealthy"
    assert view(run([ProbeOk(UUID)] * 2, state=lost))[0] == "unhealthy"
    assert view(run([ProbeOk(UUID)] * 3, state=lost))[0] == "healthy"
    # A failure in between starts the count again.
    interrupted = run([ProbeOk(UUID), ProbeOk(UUID), LostEvent(UUID, "again"), ProbeOk(UUID)], state=lost)
    assert view(interrupted)[0] == "unhealthy"
    assert interrupted.record(UUID).lost == "GPU is lost", "the first reason is kept"


def test_probe_recovery_does_not_end_xid_faults_but_probe_all_does() -> None:
    events: list[HealthEvent] = [XidEvent(UUID, 79), *[ProbeOk(UUID)] * 3]
    assert view(run(events, Policy(recovery="probe")))[0] == "unhealthy"
    assert view(run(events, Policy(recovery="probe-all")))[0] == "healthy"


def test_manual_recovery_ends_nothing_by_probes() -> None:
    policy = Policy(recovery="manual", recovery_probes=1)
    state = run([LostEvent(UUID, "lost"), *[ProbeOk(UUID)] * 5], policy)
    assert view(state, policy=policy)[0] == "unhealthy"


def test_an_operator_clear_resets_faults_keeps_counts_and_remembers_the_request() -> None:
    state = run([XidEvent(UUID, 79), LostEvent(UUID, "lost")])
    cleared = run([Cleared(DEVICE.name, clear_targets(DEVICE), "req-1")], state=state)
    assert view(cleared) == ("healthy", None, False)
    assert cleared.clears == {DEVICE.name: "req-1"}
    assert cleared.record(UUID).xid_events == 1


def test_unmonitored_is_unknown_not_unhealthy() -> None:
    state = run([Unmonitored(UUID, "no XID events")])
    health = device_health(state, DEVICE, PROBE)
    assert health.status == "unknown" and "no XID events" in health.message
    assert run([Monitored(UUID)], state=state) == HealthState()


def test_nothing_changes_for_a_healthy_gpu() -> None:
    state = HealthState()
    assert apply(state, ProbeOk(UUID), PROBE) is state
    assert apply(state, ProbeNow(), PROBE) is state
    assert apply(state, Monitored(UUID), PROBE) is state


def test_gpu_faults_reach_every_mig_device_and_mig_faults_stay_there() -> None:
    gpu = MIG_DEVICE.gpu
    other = next(d for d in MIG_INVENTORY.devices if d.mig is not None and d.name != MIG_DEVICE.name)
    lost = run([LostEvent(gpu.uuid, "lost")])
    assert view(lost, MIG_DEVICE)[0] == view(lost, other)[0] == "unhealthy"
    assert MIG_DEVICE.mig is not None
    mig_xid = run([XidEvent(MIG_DEVICE.mig.uuid, 94)])
    assert view(mig_xid, MIG_DEVICE)[0] == "unhealthy" and view(mig_xid, other)[0] == "healthy"
    assert gpu_health(mig_xid, gpu.uuid, tuple(m.uuid for m in gpu.mig_devices)).condition == "degraded"
    assert gpu_health(lost, gpu.uuid).condition == "failed"
    # Clearing one MIG device clears the GPU-wide faults too.
    cleared = run([Cleared(MIG_DEVICE.name, clear_targets(MIG_DEVICE), "r")], state=lost)
    assert view(cleared, other)[0] == "healthy"


def test_gpu_health_counts_xids_of_the_gpu_and_its_mig_devices() -> None:
    assert MIG_DEVICE.mig is not None
    gpu = MIG_DEVICE.gpu
    state = run([XidEvent(gpu.uuid, 13), XidEvent(MIG_DEVICE.mig.uuid, 31)])
    health = gpu_health(state, gpu.uuid, tuple(m.uuid for m in gpu.mig_devices))
    assert (health.condition, health.xid_events) == ("ok", 2)


EVENTS = st.lists(
    st.one_of(
        st.builds(XidEvent, st.just(UUID), st.sampled_from([13, 31, 48, 79, 94])),
        st.builds(LostEvent, st.just(UUID), st.sampled_from(["lost", "no answer"])),
        st.builds(ProbeOk, st.just(UUID)),
        st.builds(Unmonitored, st.just(UUID), st.just("unsupported")),
        st.builds(Monitored, st.just(UUID)),
    ),
    max_size=30,
)


@given(EVENTS, st.sampled_from(["manual", "probe", "probe-all"]))
def test_a_clear_always_ends_every_fault(events: list[HealthEvent], recovery: str) -> None:
    policy = Policy(recovery=recovery)  # type: ignore[arg-type]
    state = run([*events, Cleared(DEVICE.name, clear_targets(DEVICE), "r")], policy)
    health = device_health(state, DEVICE, policy)
    assert health.healthy and health.xid is None and health.lost is None


@given(EVENTS)
def test_probes_alone_never_create_a_fault(events: list[HealthEvent]) -> None:
    passing = [e for e in events if isinstance(e, ProbeOk | Monitored)]
    assert device_health(run(passing), DEVICE, PROBE).healthy
