"""A real Kubernetes cluster on loopback for the real-cluster test tier (docs/testing.md).

The components come from one binary built by ``hack/realk8s/build.sh`` from the Go module proxy:
kube-apiserver, kube-controller-manager and kube-scheduler as upstream builds them, an embedded etcd, and
hollow kubelets (the real kubelet with a fake container runtime) that run the kubelet's real DRA manager.

Everything listens on one random loopback address (``127.a.b.c``), so clusters of concurrent test runs on
one machine do not collide, and nothing leaves 127.0.0.0/8: the API server reaches kubelets through an
egress proxy that only dials that address. Every wait polls a real condition (a log line, ``/readyz``, a
Node's Ready condition) against a deadline; the deadlines are generous because they only matter when
something is broken.

The harness is synchronous (processes with their output in log files): the cluster outlives the event
loops of the async tests that use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support.paths import REPO

ROOT = REPO
BUILD = ROOT / "hack" / "realk8s" / "build.sh"

#: Set (to anything) where the tier must run, e.g. in CI: a missing binary then fails instead of skipping.
REQUIRED_ENV = "REALK8S_REQUIRED"

APISERVER_PORT, ETCD_PORT, ETCD_PEER_PORT = 6443, 2379, 2380
CONTROLLER_MANAGER_PORT, SCHEDULER_PORT, KUBELET_PORT = 10257, 10259, 10250
NODES = ("node-1", "node-2")

#: How long a component may take to become ready on a busy 2-core machine before the start counts as failed.
START_TIMEOUT = 180.0

T = TypeVar("T")


class ClusterError(Exception):
    """A component did not start or stop as it should; the message carries the end of its log."""


class WaitTimeoutError(ClusterError):
    pass


# -- the binary -----------------------------------------------------------------------------------


def locate_binary() -> tuple[Path | None, str]:
    """The cached component binary for $KUBE_VERSION (default: the pinned release), or why there is none.

    Never builds: ``make test`` (or ``make realk8s``) builds it where Go is installed.
    """
    if shutil.which("go") is None:
        return None, "Go is not installed; the real-cluster tier needs Go >= 1.26 (docs/testing.md)"
    result = subprocess.run([str(BUILD), "--locate"], capture_output=True, text=True, check=False)
    if result.returncode == 0 and result.stdout.strip():
        return Path(result.stdout.strip().splitlines()[-1]), ""
    version = os.environ.get("KUBE_VERSION", "the pinned release")
    detail = result.stderr.strip()
    return None, (
        f"the Kubernetes components ({version}) are not built: run `make realk8s` (or `make test`, which "
        f"builds them){': ' + detail if detail else ''}"
    )


def binary_version(binary: Path) -> str:
    return subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True).stdout.strip()


# -- processes ------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; raise :class:`ClusterError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, however it dies (PR_SET_PDEATHSIG), so that
    no cluster outlives a killed test run on a shared machine."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Component:
    """One process of the cluster; its output goes to ``<log>``, kept after the run for debugging."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        with self.log.open("ab") as out:
            out.write(f"--- start {' '.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # a Ctrl-C of pytest does not reach it; teardown stops it
                preexec_fn=_die_with_parent,  # noqa: PLW1509 -- one prctl call, safe after fork
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def failure(self, what: str) -> ClusterError:
        state = "running" if self.running else f"exited with {self.proc.returncode if self.proc else '?'}"
        return ClusterError(f"{self.name} ({state}): {what}; log {self.log}:\n{self.tail()}")

    def wait(
        self, predicate: Callable[[], T], what: str, timeout: float = START_TIMEOUT, interval: float = 0.05
    ) -> T:
        """Poll ``predicate``; fail early, with the log, when the process exits."""

        def check() -> T | None:
            value = predicate()
            if not value and not self.running:
                raise self.failure(f"exited while waiting for {what}")
            return value

        try:
            return wait_until(check, timeout, what, interval)
        except WaitTimeoutError as err:
            raise self.failure(str(err)) from None

    def wait_log(self, pattern: str, timeout: float = START_TIMEOUT, since: int = 0) -> str:
        """The first line after byte ``since`` of the log that matches ``pattern``."""
        rx = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self.output()[since:].splitlines() if rx.search(line)), None)

        return self.wait(found, f"a log line matching {pattern!r}", timeout)

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (kube-apiserver drains watches for a minute)."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait()


# -- HTTP polls -----------------------------------------------------------------------------------


def _https_status(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ssl.SSLError):
        return 0


def _unverified() -> ssl.SSLContext:
    """For the /healthz polls of components that serve a self-signed certificate of their own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, on a loop of its own in another thread (so the
    test's own event loop, if any, is left alone)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- the cluster ----------------------------------------------------------------------------------


@dataclass
class HollowNode:
    name: str
    root: Path  # the kubelet's --root-dir
    port: int
    component: Component

    @property
    def registry_dir(self) -> Path:
        return self.root / "plugins_registry"

    @property
    def plugins_dir(self) -> Path:
        return self.root / "plugins"

    @property
    def pod_resources_socket(self) -> Path:
        return self.root / "pod-resources" / "kubelet.sock"

    @property
    def cdi_dir(self) -> Path:
        return self.root / "cdi"


@dataclass
class Cluster:
    """A running cluster: where its files are and handles on its processes."""

    binary: Path
    version: str
    dir: Path
    ip: str
    #: Feature gates on in every component (kubelets too), e.g. ``("DRAListTypeAttributes",)``.
    feature_gates: tuple[str, ...] = ()
    components: dict[str, Component] = field(default_factory=dict)
    nodes: dict[str, HollowNode] = field(default_factory=dict)
    keep: bool = False  # leave the directory (logs, audit log, kubeconfigs) behind at teardown

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])

    @property
    def server(self) -> str:
        return f"https://{self.ip}:{APISERVER_PORT}"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (system:masters)."""
        return self.dir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def write_kubeconfig(
        self, path: Path, user: str, *, cert: str | None = None, token: str | None = None
    ) -> Path:
        """A kubeconfig for this cluster with a client certificate (``pki/<cert>.crt``) or a token."""
        credentials: dict[str, str] = {}
        if cert:
            credentials = {
                "client-certificate": str(self.pki / f"{cert}.crt"),
                "client-key": str(self.pki / f"{cert}.key"),
            }
        if token:
            credentials = {"token": token}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "realk8s",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "realk8s", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def audit_events(self) -> list[dict[str, Any]]:
        """Every event of the audit log so far (one JSON object per line)."""
        events = []
        with self.audit_log.open() as lines:
            for line in lines:
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._pki()
        self._etcd()
        self._egress_proxy()
        self._apiserver()
        self._controller_manager()
        self._scheduler()
        for index, name in enumerate(NODES):
            self.nodes[name] = self._kubelet(name, KUBELET_PORT + index)
        self.wait_nodes_ready()

    def _component(self, name: str, *args: Any) -> Component:
        component = Component(name, [self.binary, *args], self.dir / f"{name}.log")
        self.components[name] = component
        return component.start()

    def _pki(self) -> None:
        nodes = [arg for name in NODES for arg in ("--node", name)]
        subprocess.run(
            [self.binary, "pki", "--dir", self.pki, "--ip", self.ip, *nodes],
            check=True,
            capture_output=True,
        )
        self.write_kubeconfig(self.kubeconfig, "admin", cert="admin")
        for name in ("controller-manager", "scheduler"):
            self.write_kubeconfig(self.dir / f"{name}.kubeconfig", name, cert=name)
        for name in NODES:
            self.write_kubeconfig(self.dir / f"{name}.kubeconfig", name, cert=f"{name}-client")

    def _etcd(self) -> None:
        etcd = self._component(
            "etcd",
            "etcd",
            "--data-dir",
            self.dir / "etcd",
            "--listen-client-url",
            f"http://{self.ip}:{ETCD_PORT}",
            "--listen-peer-url",
            f"http://{self.ip}:{ETCD_PEER_PORT}",
        )
        etcd.wait_log(r"^etcd ready")

    def _egress_proxy(self) -> None:
        proxy = self._component(
            "egress-proxy", "egress-proxy", "--socket", self.dir / "egress.sock", "--dial-ip", self.ip
        )
        proxy.wait_log(r"^egress proxy ready")

    def _apiserver(self) -> None:
        (self.dir / "audit-policy.yaml").write_text(
            # Metadata of every request: enough to count a client's requests, small enough to read back.
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
            "rules:\n  - level: Metadata\n"
        )
        (self.dir / "egress.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.dir / "egress.sock")}},
                            },
                        }
                    ],
                }
            )
        )
        pki = self.pki
        args = [
            f"--etcd-servers=http://{self.ip}:{ETCD_PORT}",
            f"--bind-address={self.ip}",
            f"--advertise-address={self.ip}",
            f"--secure-port={APISERVER_PORT}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # A hollow kubelet's InternalIP is the machine's address; the egress proxy sends every
            # connection to the cluster's loopback address instead. (A Hostname address would be resolved
            # through DNS by the node proxy first.)
            "--kubelet-preferred-address-types=InternalIP",
            f"--egress-selector-config-file={self.dir / 'egress.yaml'}",
            f"--audit-policy-file={self.dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=blocking",
            # The endpoint reconciler would publish the loopback address in the kubernetes Endpoints,
            # which validation refuses (and retries forever).
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        args += self._feature_gates()
        if self.minor == 36:
            # DeviceTaintRule: off by default in 1.36 and served from resource.k8s.io/v1beta2 only.
            args.append("--runtime-config=resource.k8s.io/v1beta2=true")
        apiserver = self._component("kube-apiserver", "kube-apiserver", *args)
        context = self.admin_context()
        apiserver.wait(lambda: _https_status(f"{self.server}/readyz", context) == 200, "/readyz")

    def _feature_gates(self) -> list[str]:
        """The gates every component gets: the cluster's own, and on 1.36 DeviceTaintRules, which it applies
        only where the gate is on -- the API server serves them, the scheduler honours them, the controller
        manager evicts."""
        return _gate_flags([*(["DRADeviceTaintRules"] if self.minor == 36 else []), *self.feature_gates])

    def _control_plane_component(self, name: str, port: int, *extra: str) -> None:
        kubeconfig = self.dir / f"{name}.kubeconfig"
        component = self._component(
            f"kube-{name}",
            f"kube-{name}",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={self.ip}",
            f"--secure-port={port}",
            f"--cert-dir={self.dir / (name + '-certs')}",
            "--leader-elect=false",
            *self._feature_gates(),
            *extra,
        )
        url = f"https://{self.ip}:{port}/healthz"
        component.wait(lambda: _https_status(url, _unverified()) == 200, "/healthz")

    def _controller_manager(self) -> None:
        self._control_plane_component(
            "controller-manager",
            CONTROLLER_MANAGER_PORT,
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
        )

    def _scheduler(self) -> None:
        self._control_plane_component("scheduler", SCHEDULER_PORT)

    def _kubelet(self, name: str, port: int) -> HollowNode:
        root = self.dir / name
        component = Component(
            f"kubelet-{name}",
            [
                self.binary,
                "hollow-kubelet",
                f"--name={name}",
                f"--kubeconfig={self.dir / (name + '.kubeconfig')}",
                f"--root-dir={root}",
                f"--address={self.ip}",
                f"--port={port}",
                f"--tls-cert-file={self.pki / (name + '-serving.crt')}",
                f"--tls-private-key-file={self.pki / (name + '-serving.key')}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                *_gate_flags(self.feature_gates),
            ],
            self.dir / f"kubelet-{name}.log",
        )
        self.components[component.name] = component
        (root / "cdi").mkdir(parents=True, exist_ok=True)
        return HollowNode(name, root, port, component.start())

    def admin_open(self, path: str, timeout: float = 30) -> Any:
        """``GET path`` as the admin (an open HTTP response); raises on an error status."""
        return urllib.request.urlopen(self.server + path, context=self.admin_context(), timeout=timeout)

    def get(self, path: str) -> dict[str, Any] | None:
        """``GET path`` as the admin; None on 404 or when the server does not answer."""
        try:
            with self.admin_open(path, timeout=10) as response:
                loaded: dict[str, Any] = json.load(response)
                return loaded
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise
        except OSError:
            return None

    def node_ready(self, name: str) -> bool:
        node = self.get(f"/api/v1/nodes/{name}") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def wait_nodes_ready(self, names: Sequence[str] = NODES) -> None:
        for name in names:
            self.nodes[name].component.wait(
                lambda n=name: self.node_ready(n),  # type: ignore[misc]
                f"node {name} Ready",
                interval=0.2,
            )

    def restart_kubelet(self, name: str) -> None:
        """Stop and start a node's kubelet (its in-process fake runtime loses its pods, as kubemark's
        does)."""
        node = self.nodes[name]
        node.component.stop(grace=10)
        node.component.start()

    # -- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every component, kubelets first, etcd last; SIGKILL where SIGTERM takes long."""
        order = [c for c in self.components.values() if c.name.startswith("kubelet-")]
        order += [
            self.components[n] for n in ("kube-scheduler", "kube-controller-manager") if n in self.components
        ]
        for component in order:
            component.stop(grace=5)
        if "kube-apiserver" in self.components:
            self.components["kube-apiserver"].stop(grace=2)
        for name in ("egress-proxy", "etcd"):
            if name in self.components:
                self.components[name].stop(grace=10)


def _gate_flags(gates: Sequence[str]) -> list[str]:
    return [f"--feature-gates={','.join(f'{g}=true' for g in gates)}"] if gates else []


def free_loopback_address() -> str:
    """A random 127.a.b.c whose API server port is free (so concurrent runs on one machine never meet)."""
    for _ in range(50):
        ip = f"127.{random.randint(100, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((ip, APISERVER_PORT))
            except OSError:
                continue
        return ip
    raise ClusterError("no free loopback address for a test cluster")


@contextlib.contextmanager
def running_cluster(binary: Path, feature_gates: Sequence[str] = ()) -> Iterator[Cluster]:
    """Start a cluster in a fresh directory, yield it, stop it and remove the directory -- unless the
    cluster's ``keep`` is set by then (its logs and audit log are worth reading after a failure)."""
    # Short: unix socket paths (kubelet and plugin sockets under it) must stay under 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="realk8s-", dir="/tmp"))
    cluster = Cluster(
        binary, binary_version(binary), directory, free_loopback_address(), feature_gates=tuple(feature_gates)
    )
    try:
        cluster.start()
        yield cluster
    except BaseException:
        cluster.keep = True
        raise
    finally:
        cluster.stop()
        if not cluster.keep:
            shutil.rmtree(directory, ignore_errors=True)


# -- where connections go -------------------------------------------------------------------------


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/{tcp,udp}[6]: host-byte-order hex words, then the port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is in the host's (little-endian) byte order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped, int(port, 16)
    return address, int(port, 16)


def foreign_sockets(pids: Sequence[int]) -> list[str]:
    """The TCP and UDP sockets of ``pids`` with an end outside loopback (a listener on every address
    counts: anyone could connect to it), described for an assertion message."""
    inodes: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                (local, lport), (remote, rport) = _address(fields[1]), _address(fields[2])
                listening = remote.is_unspecified and rport == 0
                if not local.is_loopback or not (listening or remote.is_loopback):
                    found.append(f"pid {inodes[fields[9]]} {table} {local}:{lport} -> {remote}:{rport}")
    return found


# -- by hand ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """``python -m tests.support.realk8s [--driver]``: start a cluster (and the driver) and keep it until
    Ctrl-C, to look around with kubectl or run a command against it."""
    binary, reason = locate_binary()
    if binary is None:
        print(reason, file=sys.stderr)
        return 1
    with running_cluster(binary) as cluster:
        driver = None
        if "--driver" in argv:
            from tests.support.realk8s_driver import Driver

            driver = Driver(cluster)
            driver.install()
            for node in cluster.nodes:
                driver.start_plugin(node)
        print(f"Kubernetes {cluster.version} on {cluster.ip}; logs and audit log in {cluster.dir}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print("Ctrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            if driver is not None:
                driver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
