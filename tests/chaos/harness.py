"""One simulated node for the chaos cases: the sim API server (optionally behind the fault proxy), real
plugin processes started and killed at will, a kubelet-side DRA client that reports every answer as is,
and the checks that follow each case."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from driver._proto.dra.v1 import api_pb2 as dra
from driver._proto.dra.v1 import api_pb2_grpc as dra_grpc
from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.migmode import apply_mig_modes, parse_mig_modes
from driver.devices.model import Inventory
from driver.kube.client import NODES, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.state.api import ClaimRef, echo
from driver.state.opaque import API_VERSION
from tests.chaos.invariants import mig_problems, node_problems, orphan_specs
from tests.support.faultproxy import FaultProxy
from tests.support.processes import Process, plugin_args

DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
PROFILE = "pcie-l4x4"
DEVICES = tuple(d.name for d in load_named_profile(PROFILE, node_name=NODE).inventory.devices)
#: How long the plugin may take to serve and to publish again once a fault is over. The publisher's
#: backoff is capped at 30 s, and the cases keep faults short enough that it stays far below.
SETTLE_S = 45.0
CALL_TIMEOUT_S = 45.0  # the kubelet's deadline
#: The steps ``ACCEL_DRA_CRASH_AT`` can kill at (docs/node-state.md).
CRASH_STEPS = (
    "prepare:overlap-checked",
    "prepare:started",
    "prepare:config-applied",
    "prepare:cdi-written",
    "prepare:completed",
    "unprepare:sharing-reset",
    "unprepare:cdi-removed",
    "unprepare:completed",
    "checkpoint:tmp-written",
    "cdi:tmp-written",
)
MIG_CRASH_STEPS = (
    "mig:gpu-instance-created",
    "mig:compute-instance-created",
    "mig:compute-instance-destroyed",
    "mig:gpu-instance-destroyed",
)


@dataclass(frozen=True)
class Machine:
    """The fake GPUs a chaos node's plugin serves, and the devices its claims are allocated from."""

    profile: str
    mig_modes: str | None = None
    #: Claims name devices of this GPU only (all devices when empty).
    claim_gpu: str = ""

    def inventory(self) -> Inventory:
        """The node's devices as the plugin publishes them (each GPU in its MIG mode)."""
        inventory = load_named_profile(self.profile, node_name=NODE).inventory
        return apply_mig_modes(inventory, parse_mig_modes(self.mig_modes)) if self.mig_modes else inventory

    @property
    def crash_steps(self) -> tuple[str, ...]:
        return (*CRASH_STEPS, *MIG_CRASH_STEPS) if self.mig_modes else CRASH_STEPS


STATIC = Machine(PROFILE)
#: An A100 in dynamic MIG mode (its 26 devices overlap: the whole GPU, every profile at every placement).
DYNAMIC_MIG = Machine("mig-dynamic", "static,0000:0f:00.0=dynamic", claim_gpu="gpu-0000-0f-00-0")


class ChaosError(AssertionError):
    """An invariant broke; the message says which, and the test adds the seed to replay it."""


@dataclass(frozen=True)
class Claim:
    name: str
    uid: str
    device: str
    admin: bool = False
    namespace: str = "default"

    @property
    def ref(self) -> ClaimRef:
        return ClaimRef(self.namespace, self.uid, self.name)


@dataclass
class Answer:
    """One DRA call as the kubelet sees it: a gRPC status, or an error or devices per claim UID."""

    code: grpc.StatusCode
    details: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    devices: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


class Dra:
    """NodePrepareResources / NodeUnprepareResources (v1) over the plugin's socket; answers as they come."""

    def __init__(self, socket_path: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix://{socket_path}")
        self.stub = dra_grpc.DRAPluginStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    def _claims(refs: Sequence[ClaimRef]) -> list[Any]:
        return [dra.Claim(namespace=r.namespace, uid=r.uid, name=r.name) for r in refs]

    async def prepare(self, refs: Sequence[ClaimRef], timeout: float = CALL_TIMEOUT_S) -> Answer:
        request = dra.NodePrepareResourcesRequest(claims=self._claims(refs))
        try:
            return answer_of(await self.stub.NodePrepareResources(request, timeout=timeout))
        except grpc.aio.AioRpcError as err:
            return Answer(err.code(), err.details() or "")

    async def unprepare(self, refs: Sequence[ClaimRef], timeout: float = CALL_TIMEOUT_S) -> Answer:
        request = dra.NodeUnprepareResourcesRequest(claims=self._claims(refs))
        try:
            return answer_of(await self.stub.NodeUnprepareResources(request, timeout=timeout))
        except grpc.aio.AioRpcError as err:
            return Answer(err.code(), err.details() or "")


def answer_of(response: Any) -> Answer:
    """A NodePrepare/NodeUnprepareResources response (either API version) as an :class:`Answer`."""
    answer = Answer(grpc.StatusCode.OK)
    for uid, entry in response.claims.items():
        if entry.error:
            answer.errors[uid] = entry.error
        else:
            answer.devices[uid] = [d.device_name for d in getattr(entry, "devices", ())]
    return answer


def claim_body(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}},
    }


def allocation(device: str, admin: bool, interval: str | None = None, node: str = NODE) -> dict[str, Any]:
    """``status`` of a claim allocated one device of ``node``, as the scheduler writes it; ``interval``:
    with a time-slicing config (a side effect beyond the CDI spec, so its prepare records intent first)."""
    result: dict[str, Any] = {"request": "gpu", "driver": DRIVER, "pool": node, "device": device}
    if admin:
        result["adminAccess"] = True
    devices: dict[str, Any] = {"results": [result]}
    if interval is not None:
        parameters = {
            "apiVersion": API_VERSION,
            "kind": "GpuConfig",
            "sharing": {"strategy": "TimeSlicing", "timeSlicing": {"interval": interval}},
        }
        devices["config"] = [
            {"source": "FromClaim", "requests": [], "opaque": {"driver": DRIVER, "parameters": parameters}}
        ]
    selector = {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
    }
    return {"allocation": {"devices": devices, "nodeSelector": selector}}


#: gRPC itself logs a request that does not decode, with a traceback: not the plugin's error.
_GRPC_DECODE = "Unexpected [DecodeError] raised by servicer method"


def unexpected_errors(lines: Sequence[str]) -> list[str]:
    """Log events (a ``ts=`` line and what follows it) that carry a traceback the plugin did not expect."""
    events: list[list[str]] = []
    for line in lines:
        if line.startswith("ts=") or not events:
            events.append([line])
        else:
            events[-1].append(line)
    return [
        event[0]
        for event in events
        if any("Traceback" in line or "exception was never retrieved" in line for line in event)
        and _GRPC_DECODE not in event[0]
    ]


def names(ref: ClaimRef) -> str:
    """How an error must name the claim (long names are cut, docs/plugin.md)."""
    return f"{echo(ref.namespace)}/{echo(ref.name)}"


def check_answer(answer: Answer, refs: Sequence[ClaimRef], call: str) -> None:
    """The kubelet's rules, plus ours: one entry per claim, every error naming its claim, short messages."""
    if answer.ok:
        asked = {r.uid for r in refs}
        answered = set(answer.errors) | set(answer.devices)
        if answered != asked:
            raise ChaosError(f"{call}: answered {sorted(answered)} for {sorted(asked)}")
        for ref in refs:
            error = answer.errors.get(ref.uid)
            # The answer is keyed by UID: one UID sent twice (under two names) gets one entry, naming one.
            same_uid = [names(r) for r in refs if r.uid == ref.uid]
            if error is not None and not any(n in error for n in same_uid):
                raise ChaosError(f"{call}: the error for {ref} does not name it: {error!r}")
            if error is not None and len(error.encode()) > 2048:
                raise ChaosError(f"{call}: error for {ref} is {len(error.encode())} bytes")
        return
    if answer.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        raise ChaosError(f"{call}: {answer.code.name} (no claim named): {answer.details!r}")
    if answer.code == grpc.StatusCode.FAILED_PRECONDITION and not any(
        names(r) in answer.details for r in refs
    ):
        raise ChaosError(f"{call}: the call failed naming none of its claims: {answer.details!r}")
    if len(answer.details.encode()) > 4096:
        raise ChaosError(f"{call}: status message is {len(answer.details.encode())} bytes")


class ChaosNode:
    """A node directory tree, the API server (optionally behind a fault proxy) and the plugin process.

    ``apiserver``: the sim API server, or None for a real one (tests/realk8s), which ``kube`` (an admin)
    and the proxy reach instead; ``node``: the Node the plugin serves; ``namespace``: its claims'."""

    def __init__(
        self,
        root: Path,
        apiserver: SimApiServer | None,
        kube: KubeClient,
        proxy: FaultProxy | None,
        machine: Machine = STATIC,
        *,
        node: str = NODE,
        namespace: str = "default",
    ) -> None:
        self.root = root
        self.node = node
        self.namespace = namespace
        self.machine = machine
        self.inventory = machine.inventory()
        self.devices = tuple(d.name for d in self.inventory.devices)
        self.claimable = tuple(d for d in self.devices if d.startswith(machine.claim_gpu))
        self.fake_state = root / "fake-state"
        self.apiserver = apiserver
        self.kube = kube
        self.proxy = proxy
        self.plugins = root / "plugins"
        self.plugin_dir = self.plugins / DRIVER
        self.registry = root / "registry"
        self.cdi = root / "cdi"
        for d in (self.plugins, self.registry, self.cdi):
            d.mkdir(parents=True, exist_ok=True)
        self.boot_file = root / "boot_id"
        self.boot_file.write_text("boot-1\n")
        self.kubeconfig = root / "kubeconfig"
        if proxy is not None:
            proxy.write_kubeconfig(self.kubeconfig)
        else:
            self.sim.write_kubeconfig(self.kubeconfig)
        self.process: Process | None = None
        self.dra: Dra | None = None
        self.starts = 0
        self.claims: list[Claim] = []

    # -- the API server side --------------------------------------------------------------------------

    @property
    def sim(self) -> SimApiServer:
        assert self.apiserver is not None, "a real API server: use the API"
        return self.apiserver

    async def register_node(self) -> None:
        self.sim.create(NODES, {"metadata": {"name": self.node}})
        self.sim.allow_admin_access(self.namespace)  # some claims have admin access

    async def create_claims(
        self, rng: random.Random, count: int, prefix: str = "c", time_sliced: float = 0.0
    ) -> list[Claim]:
        """Claims allocated as a scheduler would not always (two claims may name one device: the plugin
        must refuse the second); about one in six with admin access, and the share ``time_sliced`` with a
        time-slicing config."""
        made = []
        for _ in range(count):
            name = f"{prefix}-{len(self.claims) + len(made)}"
            device = rng.choice(self.claimable)
            admin = rng.random() < 0.16
            interval = rng.choice(("Short", "Long")) if time_sliced and rng.random() < time_sliced else None
            made.append(await self.create_claim(name, device, admin, interval))
        self.claims += made
        return made

    async def create_claim(
        self, name: str, device: str, admin: bool = False, interval: str | None = None
    ) -> Claim:
        created = await self.kube.create(RESOURCE_CLAIMS, claim_body(name, self.namespace), self.namespace)
        created["status"] = allocation(device, admin, interval, self.node)
        await self.kube.update(RESOURCE_CLAIMS, created, self.namespace, subresource="status")
        return Claim(name, created["metadata"]["uid"], device, admin, self.namespace)

    def published(self) -> set[str]:
        return {
            str(d.get("name"))
            for s in self.sim.objects(RESOURCE_SLICES)
            if s["spec"].get("nodeName") == self.node and s["spec"].get("driver") == DRIVER
            for d in s["spec"].get("devices") or []
        }

    async def wait_published(self, timeout: float = SETTLE_S) -> None:
        try:
            await self.sim.wait_for(lambda _s: self.published() == set(self.devices), timeout)
        except TimeoutError:
            raise ChaosError(
                f"slices not published within {timeout}s: {sorted(self.published())}\n{self.log_tail()}"
            ) from None

    # -- the plugin process ---------------------------------------------------------------------------

    def argv(self, *extra: str) -> list[str]:
        mig = (
            ("--mig-mode", self.machine.mig_modes, "--fake-state-dir", str(self.fake_state))
            if self.machine.mig_modes
            else ()
        )
        return plugin_args(
            kubeconfig=self.kubeconfig,
            node=self.node,
            plugin_dir=self.plugin_dir,
            registry_dir=self.registry,
            cdi_dir=self.cdi,
            driver=DRIVER,
            extra=(
                "--backend",
                f"fake:{self.machine.profile}",
                "--boot-id-file",
                str(self.boot_file),
                *mig,
                *extra,
            ),
        )

    async def start(self, *extra: str, crash_at: str | None = None, wait: bool = True) -> Process:
        """Start a plugin; ``wait``: until it serves (it may also die at a crash step first)."""
        await self.close_client()
        env = {"ACCEL_DRA_CRASH_AT": crash_at} if crash_at else None
        self.process = await Process.start(self.argv(*extra), name=f"plugin#{self.starts}", env=env)
        self.starts += 1
        if wait:
            await self.wait_serving()
        return self.process

    async def wait_serving(self, timeout: float = SETTLE_S) -> None:
        """Until the plugin logs that it runs and answers an empty NodePrepareResources."""
        assert self.process is not None
        await self.process.wait_log("plugin running", timeout=timeout)
        self.dra = Dra(self.plugin_dir / "dra.sock")
        answer = await self.dra.prepare([], timeout=timeout)
        if not answer.ok:
            raise ChaosError(f"plugin does not serve: {answer.code.name} {answer.details}\n{self.log_tail()}")

    async def wait_logged(self, predicate: Callable[[], bool], what: str, timeout: float = SETTLE_S) -> None:
        """Until ``predicate()`` holds, re-checked whenever the plugin logs a line (it logs every sweep,
        sync and call), so no polling interval is guessed."""
        process = self.process
        assert process is not None
        try:
            async with asyncio.timeout(timeout), process._changed:
                await process._changed.wait_for(lambda: predicate() or not self.alive())
        except TimeoutError:
            raise ChaosError(f"{what}: not within {timeout}s\n{self.log_tail()}") from None
        if not predicate():
            raise ChaosError(f"{what}: the plugin exited first\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.returncode is None

    async def kill(self) -> None:
        if self.process is not None:
            await self.process.kill()
        await self.close_client()

    async def stop(self) -> None:
        """SIGTERM: a clean stop must exit 0, whatever happened before."""
        if self.process is not None and self.alive():
            code = await self.process.terminate(signal.SIGTERM, timeout=20)
            if code != 0:
                raise ChaosError(f"plugin exited {code} on SIGTERM\n{self.log_tail()}")
        await self.close_client()

    async def close_client(self) -> None:
        if self.dra is not None:
            await self.dra.close()
            self.dra = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.process.lines[-lines:]) if self.process else ""

    def tracebacks(self) -> list[str]:
        return unexpected_errors(self.process.lines) if self.process else []

    # -- checks ---------------------------------------------------------------------------------------

    def check(self, *, settled: bool = True) -> None:
        problems = node_problems(self.plugin_dir, self.cdi, DRIVER, settled=settled)
        if self.machine.mig_modes and settled:
            problems += mig_problems(self.plugin_dir, self.cdi, DRIVER, self.inventory, self.mig_hardware())
        if problems:
            raise ChaosError("node state broken:\n  " + "\n  ".join(problems) + "\n" + self.log_tail())

    def check_started(self) -> None:
        """Right after a start: no CDI spec without checkpoint entry (a crash between a claim's spec and its
        first checkpoint entry leaves an orphan the start removes), no MIG instance left that no completed
        claim holds (the start rolls back interrupted prepares before it serves)."""
        problems = orphan_specs(self.plugin_dir, self.cdi, DRIVER)
        if self.machine.mig_modes:
            problems += mig_problems(
                self.plugin_dir, self.cdi, DRIVER, self.inventory, self.mig_hardware(), settled=False
            )
        if problems:
            raise ChaosError("after a start:\n  " + "\n  ".join(problems) + "\n" + self.log_tail())

    def mig_hardware(self) -> FakeBackend:
        """The fake GPUs as the plugin left them (their MIG instances live under the fake state directory)."""
        backend = open_backend(f"fake:{self.machine.profile}", node_name=NODE, state_dir=str(self.fake_state))
        assert isinstance(backend, FakeBackend)
        return backend

    async def call(self, op: str, refs: Sequence[ClaimRef], check: bool = True) -> Answer:
        """One DRA call; ``check``: judge the answer (not when the caller is killing the plugin)."""
        assert self.dra is not None, "plugin not serving"
        answer = await (self.dra.prepare(refs) if op == "prepare" else self.dra.unprepare(refs))
        if check and self.alive():
            check_answer(answer, refs, f"{op} {[echo(r.name) for r in refs]}")
        return answer


@contextlib.contextmanager
def umask(mask: int) -> Any:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
