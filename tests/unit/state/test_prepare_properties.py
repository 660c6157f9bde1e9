"""Property: random prepare / unprepare / restart / crash sequences keep the node-state invariants.

The preparer runs in-process on real files. A crash is simulated by raising at a named step (where the real
plugin would SIGKILL itself); the "kubelet" then restarts the preparer and replays the interrupted call, as
the real kubelet retries. A model says which claims must be prepared; after every call:

* exactly the prepared claims have a CDI spec, each valid by the CDI rules and naming the returned ids;
* the checkpoint holds exactly the prepared claims, all ``PrepareCompleted``;
* no device is prepared for two claims unless one of them has admin access.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver import crash
from driver.devices.fake import load_named_profile
from driver.state.api import ClaimRef
from driver.state.checkpoint import CheckpointStore, ClaimState
from driver.state.prepare import NodePreparer
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.preparers import node_preparer

DRIVER = "gpu.accel-dra.dev"
INVENTORY = load_named_profile("pcie-l4x4", node_name="node-1").inventory
DEVICES = [d.name for d in INVENTORY.devices]
UIDS = ["0a1", "1b2", "2c3", "3d4", "4e5"]
PREPARE_STEPS = [
    "prepare:started",
    "prepare:overlap-checked",
    "prepare:config-applied",
    "cdi:tmp-written",
    "prepare:cdi-written",
    "prepare:completed",
    "checkpoint:tmp-written",
]
UNPREPARE_STEPS = [
    "unprepare:sharing-reset",
    "unprepare:cdi-removed",
    "unprepare:completed",
    "checkpoint:tmp-written",
]


class Crash(BaseException):
    pass


@dataclass(frozen=True)
class ClaimSpec:
    uid: str
    devices: tuple[str, ...]
    admin: bool

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {"name": f"c-{self.uid}", "namespace": "ns", "uid": self.uid},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {
                                "request": "gpu",
                                "driver": DRIVER,
                                "pool": "node-1",
                                "device": d,
                                "adminAccess": self.admin,
                            }
                            for d in self.devices
                        ]
                    }
                }
            },
        }

    def ref(self) -> ClaimRef:
        return ClaimRef("ns", self.uid, f"c-{self.uid}")


claim_specs = st.tuples(
    *(
        st.builds(
            ClaimSpec,
            st.just(uid),
            st.lists(st.sampled_from(DEVICES), min_size=1, max_size=2, unique=True).map(tuple),
            st.sampled_from([False, False, False, True]),  # admin access now and then
        )
        for uid in UIDS
    )
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("prepare"), st.integers(0, len(UIDS) - 1), st.none()),
        st.tuples(st.just("unprepare"), st.integers(0, len(UIDS) - 1), st.none()),
        st.tuples(st.just("restart"), st.just(0), st.none()),
        st.tuples(st.just("prepare"), st.integers(0, len(UIDS) - 1), st.sampled_from(PREPARE_STEPS)),
        st.tuples(st.just("unprepare"), st.integers(0, len(UIDS) - 1), st.sampled_from(UNPREPARE_STEPS)),
    ),
    min_size=1,
    max_size=25,
)


class Harness:
    def __init__(self, root: Path, claims: tuple[ClaimSpec, ...]) -> None:
        self.root = root
        self.claims = claims
        self.prepared: set[str] = set()  # the model
        self.crash_step: str | None = None
        self.preparer = self.start()

    def start(self) -> NodePreparer:
        p = node_preparer(self.root, INVENTORY, boot_id="boot")
        p.recover()
        return p

    def hook(self, step: str) -> None:
        if step == self.crash_step:
            self.crash_step = None
            raise Crash(step)

    def expect_prepare_ok(self, c: ClaimSpec) -> bool:
        if c.uid in self.prepared or c.admin:
            return True
        held = {
            d
            for other in self.claims
            if other.uid in self.prepared and not other.admin
            for d in other.devices
        }
        return not held & set(c.devices)

    def call(self, op: str, c: ClaimSpec) -> Any:
        if op == "prepare":
            results, _ = self.preparer.prepare_sync([c.body()])
            return results[c.uid]
        return self.preparer.unprepare_sync([c.ref()])[c.uid]

    def run(self, op: str, index: int, step: str | None) -> None:
        c = self.claims[index]
        if op == "restart":
            self.preparer = self.start()
            self.check()
            return
        self.crash_step = step
        try:
            outcome = self.call(op, c)
        except Crash:
            self.preparer = self.start()  # the plugin restarts; the kubelet retries the same call
            outcome = self.call(op, c)
        self.crash_step = None
        if op == "prepare":
            ok = self.expect_prepare_ok(c)
            assert (outcome.error == "") == ok, (c, outcome.error, self.prepared)
            if ok:
                self.prepared.add(c.uid)
                assert [d.cdi_device_ids for d in outcome.devices] == [
                    (f"k8s.{DRIVER}/gpu={c.uid}-{d}",) for d in c.devices
                ]
        else:
            assert outcome == ""
            self.prepared.discard(c.uid)
        self.check()

    def check(self) -> None:
        cdi = self.root / "cdi"
        specs = (
            {p.name.split("_", 1)[1][: -len(".json")]: p for p in cdi.glob("*.json")} if cdi.exists() else {}
        )
        assert set(specs) == self.prepared
        for uid, path in specs.items():
            spec = json.loads(path.read_text())
            assert_valid_cdi(spec)
            c = next(x for x in self.claims if x.uid == uid)
            assert [d["name"] for d in spec["devices"]] == [f"{uid}-{d}" for d in c.devices]
        leftovers = [
            p.name
            for d in (cdi, self.root / "plugin")
            if d.exists()
            for p in d.iterdir()
            if p.name.endswith(".tmp")
        ]
        assert not leftovers, "a restart removes what interrupted writes left"
        cp, _ = CheckpointStore(self.root / "plugin", "boot").load()
        assert {uid: r.state for uid, r in cp.claims.items()} == dict.fromkeys(
            self.prepared, ClaimState.PREPARE_COMPLETED
        )
        owners: dict[str, str] = {}
        for r in cp.claims.values():
            for d in r.devices:
                if d.admin_access:
                    continue
                assert d.device not in owners, f"{d.device} prepared for {owners.get(d.device)} and {r.uid}"
                owners[d.device] = r.uid


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claims=claim_specs, ops=operations)
def test_random_sequences_keep_the_invariants(
    claims: tuple[ClaimSpec, ...], ops: list[tuple[str, int, str | None]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="adra-prop-") as root:
        harness = Harness(Path(root), claims)
        crash.set_crash_hook(harness.hook)
        try:
            for op, index, step in ops:
                harness.run(op, index, step)
        finally:
            crash.set_crash_hook(None)
