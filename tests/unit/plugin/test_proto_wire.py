"""Wire compatibility of the generated kubelet protocol code with upstream Kubernetes.

The kubelet only sees gRPC method paths and protobuf field numbers/types, so those are
what these tests pin down: against literal upstream values, over a real Unix socket,
and through serialized bytes.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from driver._proto.dra.v1 import api_pb2 as dra_v1
from driver._proto.dra.v1beta1 import api_pb2 as dra_v1beta1
from driver._proto.dra_health.v1 import api_pb2 as health_v1
from driver._proto.dra_health.v1alpha1 import api_pb2 as health_v1alpha1
from driver._proto.pluginregistration.v1 import api_pb2 as registration_v1
from driver._proto.podresources.v1 import api_pb2 as podresources_v1
from tests.support import paths

REPO_ROOT = paths.REPO

PROTO_MODULES = (
    "driver._proto.pluginregistration.v1",
    "driver._proto.dra.v1",
    "driver._proto.dra.v1beta1",
    "driver._proto.dra_health.v1alpha1",
    "driver._proto.dra_health.v1",
    "driver._proto.podresources.v1",
)

# Every RPC path the kubelet dials (or, for podresources, serves), as in upstream Go code.
UPSTREAM_METHOD_PATHS = {
    "driver._proto.pluginregistration.v1": [
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    ],
    "driver._proto.dra.v1": [
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
    ],
    "driver._proto.dra.v1beta1": [
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
    ],
    "driver._proto.dra_health.v1alpha1": [
        "/v1alpha1.DRAResourceHealth/NodeWatchResources",
    ],
    "driver._proto.dra_health.v1": [
        "/v1.DRAResourceHealth/NodeWatchResources",
    ],
    "driver._proto.podresources.v1": [
        "/v1.PodResourcesLister/List",
        "/v1.PodResourcesLister/GetAllocatableResources",
        "/v1.PodResourcesLister/Get",
    ],
}

T = FieldDescriptor
# (message class, field name) -> (number, type, repeated, explicit presence)
UPSTREAM_FIELDS: dict[tuple[Any, str], tuple[int, int, bool, bool]] = {
    (registration_v1.PluginInfo, "type"): (1, T.TYPE_STRING, False, False),
    (registration_v1.PluginInfo, "name"): (2, T.TYPE_STRING, False, False),
    (registration_v1.PluginInfo, "endpoint"): (3, T.TYPE_STRING, False, False),
    (registration_v1.PluginInfo, "supported_versions"): (4, T.TYPE_STRING, True, False),
    (registration_v1.RegistrationStatus, "plugin_registered"): (1, T.TYPE_BOOL, False, False),
    (registration_v1.RegistrationStatus, "error"): (2, T.TYPE_STRING, False, False),
    (dra_v1.Claim, "namespace"): (1, T.TYPE_STRING, False, False),
    (dra_v1.Claim, "uid"): (2, T.TYPE_STRING, False, False),
    (dra_v1.Claim, "name"): (3, T.TYPE_STRING, False, False),
    (dra_v1.NodePrepareResourcesRequest, "claims"): (1, T.TYPE_MESSAGE, True, False),
    (dra_v1.NodePrepareResourcesResponse, "claims"): (1, T.TYPE_MESSAGE, True, False),
    (dra_v1.NodePrepareResourceResponse, "devices"): (1, T.TYPE_MESSAGE, True, False),
    (dra_v1.NodePrepareResourceResponse, "error"): (2, T.TYPE_STRING, False, False),
    (dra_v1.Device, "request_names"): (1, T.TYPE_STRING, True, False),
    (dra_v1.Device, "pool_name"): (2, T.TYPE_STRING, False, False),
    (dra_v1.Device, "device_name"): (3, T.TYPE_STRING, False, False),
    (dra_v1.Device, "cdi_device_ids"): (4, T.TYPE_STRING, True, False),
    (dra_v1.Device, "share_id"): (5, T.TYPE_STRING, False, True),
    (dra_v1.NodeUnprepareResourcesRequest, "claims"): (1, T.TYPE_MESSAGE, True, False),
    (dra_v1.NodeUnprepareResourcesResponse, "claims"): (1, T.TYPE_MESSAGE, True, False),
    (dra_v1.NodeUnprepareResourceResponse, "error"): (1, T.TYPE_STRING, False, False),
    (health_v1alpha1.DeviceIdentifier, "pool_name"): (1, T.TYPE_STRING, False, False),
    (health_v1alpha1.DeviceIdentifier, "device_name"): (2, T.TYPE_STRING, False, False),
    (health_v1alpha1.DeviceHealth, "device"): (1, T.TYPE_MESSAGE, False, True),
    (health_v1alpha1.DeviceHealth, "health"): (2, T.TYPE_ENUM, False, False),
    (health_v1alpha1.DeviceHealth, "last_updated_time"): (3, T.TYPE_INT64, False, False),
    (health_v1alpha1.DeviceHealth, "health_check_timeout_seconds"): (4, T.TYPE_INT64, False, False),
    (health_v1alpha1.DeviceHealth, "message"): (5, T.TYPE_STRING, False, False),
    (health_v1alpha1.NodeWatchResourcesResponse, "devices"): (1, T.TYPE_MESSAGE, True, False),
    (podresources_v1.PodResources, "cpu_ids"): (4, T.TYPE_INT64, True, False),
    (podresources_v1.PodResources, "memory"): (5, T.TYPE_MESSAGE, True, False),
    (podresources_v1.ContainerResources, "dynamic_resources"): (5, T.TYPE_MESSAGE, True, False),
    (podresources_v1.DynamicResource, "claim_name"): (2, T.TYPE_STRING, False, False),
    (podresources_v1.DynamicResource, "claim_namespace"): (3, T.TYPE_STRING, False, False),
    (podresources_v1.DynamicResource, "claim_resources"): (4, T.TYPE_MESSAGE, True, False),
    (podresources_v1.ClaimResource, "cdi_devices"): (1, T.TYPE_MESSAGE, True, False),
    (podresources_v1.ClaimResource, "driver_name"): (2, T.TYPE_STRING, False, False),
    (podresources_v1.ClaimResource, "pool_name"): (3, T.TYPE_STRING, False, False),
    (podresources_v1.ClaimResource, "device_name"): (4, T.TYPE_STRING, False, False),
    (podresources_v1.ClaimResource, "share_id"): (5, T.TYPE_STRING, False, True),
    (podresources_v1.CDIDevice, "name"): (1, T.TYPE_STRING, False, False),
    (podresources_v1.NUMANode, "ID"): (1, T.TYPE_INT64, False, False),
}


def _method_paths(module: ModuleType) -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


@pytest.mark.parametrize("package", PROTO_MODULES)
def test_descriptor_method_paths_match_upstream(package: str) -> None:
    module = importlib.import_module(f"{package}.api_pb2")
    assert _method_paths(module) == UPSTREAM_METHOD_PATHS[package]


@pytest.mark.parametrize(
    ("message", "name", "expected"),
    [
        pytest.param(message, name, expected, id=f"{message.DESCRIPTOR.full_name}.{name}")
        for (message, name), expected in UPSTREAM_FIELDS.items()
    ],
)
def test_field_numbers_and_types_match_upstream(
    message: Any, name: str, expected: tuple[int, int, bool, bool]
) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    assert (field.number, field.type, field.is_repeated, field.has_presence) == expected


def test_message_field_sets_are_exactly_upstream() -> None:
    # Extra fields would be harmless on the wire, but they would mean we drifted from upstream.
    assert [f.name for f in dra_v1.Device.DESCRIPTOR.fields] == [
        "request_names",
        "pool_name",
        "device_name",
        "cdi_device_ids",
        "share_id",
    ]
    assert [f.name for f in dra_v1beta1.Device.DESCRIPTOR.fields] == [
        "request_names",
        "pool_name",
        "device_name",
        "cdi_device_ids",
    ]
    assert [f.number for f in health_v1alpha1.DeviceHealth.DESCRIPTOR.fields] == [1, 2, 3, 4, 5]
    assert [f.name for f in registration_v1.PluginInfo.DESCRIPTOR.fields] == [
        "type",
        "name",
        "endpoint",
        "supported_versions",
    ]


def test_share_id_is_proto3_optional_in_v1_only() -> None:
    share_id = dra_v1.Device.DESCRIPTOR.fields_by_name["share_id"]
    # proto3 `optional` is encoded as a synthetic one-field oneof named "_<field>".
    assert share_id.containing_oneof is not None
    assert share_id.containing_oneof.name == "_share_id"
    assert not dra_v1.Device().HasField("share_id")
    assert dra_v1.Device(share_id="").HasField("share_id")
    assert "share_id" not in dra_v1beta1.Device.DESCRIPTOR.fields_by_name


def test_map_fields_are_keyed_by_string() -> None:
    for message in (dra_v1.NodePrepareResourcesResponse, dra_v1.NodeUnprepareResourcesResponse):
        entry = message.DESCRIPTOR.fields_by_name["claims"].message_type
        assert entry.GetOptions().map_entry
        assert entry.fields_by_name["key"].type == T.TYPE_STRING


def test_health_status_enum_values() -> None:
    for module in (health_v1alpha1, health_v1):
        assert dict(module.HealthStatus.items()) == {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def test_health_v1_is_v1alpha1_on_the_wire() -> None:
    # Same messages, another package: what one version sends, the other reads unchanged.
    response = health_v1.NodeWatchResourcesResponse(
        devices=[
            health_v1.DeviceHealth(
                device=health_v1.DeviceIdentifier(pool_name="node-a", device_name="gpu-0"),
                health=health_v1.UNHEALTHY,
                last_updated_time=1_700_000_000,
                health_check_timeout_seconds=30,
                message="XID 79",
            )
        ]
    )
    wire = response.SerializeToString(deterministic=True)
    old = health_v1alpha1.NodeWatchResourcesResponse.FromString(wire)
    assert old.SerializeToString(deterministic=True) == wire
    assert old.devices[0].health == health_v1alpha1.UNHEALTHY


def test_dynamic_resource_field_1_stays_reserved() -> None:
    proto = descriptor_pb2.DescriptorProto()
    podresources_v1.DynamicResource.DESCRIPTOR.CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(1, 2)]  # end is exclusive
    assert list(proto.reserved_name) == ["class_name"]


def test_all_modules_load_together_in_a_fresh_process() -> None:
    modules = [f"{p}.{m}" for p in PROTO_MODULES for m in ("api_pb2", "api_pb2_grpc")]
    script = (
        "import importlib, sys\n"
        f"mods = [importlib.import_module(n) for n in {modules!r}]\n"
        "print('\\n'.join(m.DESCRIPTOR.name for m in mods if hasattr(m, 'DESCRIPTOR')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    # Distinct descriptor file names are what keeps the api.proto files from colliding.
    assert done.stdout.split() == [f"{p.replace('.', '/')}/api.proto" for p in PROTO_MODULES]


def _prepare_response(module: ModuleType, claims: dict[str, list[tuple[str, str, list[str]]]]) -> Any:
    response = module.NodePrepareResourcesResponse()
    for uid, devices in claims.items():
        entry = response.claims[uid]
        for pool, device, cdi_ids in devices:
            entry.devices.add(
                request_names=["gpu"], pool_name=pool, device_name=device, cdi_device_ids=cdi_ids
            )
    return response


_names = st.text(min_size=1, max_size=12)
_claims = st.dictionaries(
    _names, st.lists(st.tuples(_names, _names, st.lists(_names, max_size=3)), max_size=3), max_size=4
)


@given(_claims)
def test_v1_prepare_response_without_share_id_is_v1beta1_on_the_wire(
    claims: dict[str, list[tuple[str, str, list[str]]]],
) -> None:
    wire = _prepare_response(dra_v1, claims).SerializeToString(deterministic=True)
    parsed = dra_v1beta1.NodePrepareResourcesResponse.FromString(wire)
    assert parsed == _prepare_response(dra_v1beta1, claims)
    assert parsed.SerializeToString(deterministic=True) == wire


def test_share_id_survives_a_v1beta1_hop_as_unknown_field() -> None:
    device = dra_v1.Device(
        pool_name="node-a", device_name="gpu-0", cdi_device_ids=["k8s.gpu/gpu=0"], share_id="s-1"
    )
    old = dra_v1beta1.Device.FromString(device.SerializeToString())
    assert (old.pool_name, old.device_name, list(old.cdi_device_ids)) == (
        "node-a",
        "gpu-0",
        ["k8s.gpu/gpu=0"],
    )
    back = dra_v1.Device.FromString(old.SerializeToString())
    assert back.HasField("share_id")
    assert back.share_id == "s-1"


def test_v1beta1_request_parses_as_v1() -> None:
    claim = {"namespace": "ns", "uid": "0b1c-uid", "name": "claim-a"}
    wire = dra_v1beta1.NodeUnprepareResourcesRequest(claims=[claim]).SerializeToString()
    parsed = dra_v1.NodeUnprepareResourcesRequest.FromString(wire)
    assert [(c.namespace, c.uid, c.name) for c in parsed.claims] == [("ns", "0b1c-uid", "claim-a")]


def _servicer_for(grpc_module: ModuleType, service: Any) -> Any:
    """A servicer whose every method answers with an empty response (streams: one)."""

    def handler(method: Any) -> Callable[..., Any]:
        response_class = message_factory.GetMessageClass(method.output_type)
        if method.server_streaming:

            def stream(_self: Any, _request: Any, _context: Any) -> Iterator[Any]:
                yield response_class()

            return stream
        return lambda _self, _request, _context: response_class()

    base = getattr(grpc_module, f"{service.name}Servicer")
    return type(f"Test{service.name}", (base,), {m.name: handler(m) for m in service.methods})()


@pytest.fixture(scope="module")
def uds_channel() -> Iterator[grpc.Channel]:
    """A real gRPC server on a Unix socket serving every generated service."""
    # Short directory: AF_UNIX paths are limited to 108 bytes.
    sock_dir = tempfile.mkdtemp(prefix="pw-")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    for package in PROTO_MODULES:
        pb2 = importlib.import_module(f"{package}.api_pb2")
        pb2_grpc = importlib.import_module(f"{package}.api_pb2_grpc")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            getattr(pb2_grpc, f"add_{service.name}Servicer_to_server")(
                _servicer_for(pb2_grpc, service), server
            )
    address = f"unix://{sock_dir}/s.sock"
    assert server.add_insecure_port(address) == 1
    server.start()
    channel = grpc.insecure_channel(address)
    try:
        yield channel
    finally:
        channel.close()
        server.stop(grace=None).wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _call_raw(channel: grpc.Channel, path: str, streaming: bool) -> list[bytes]:
    """Calls `path` the way a Go client would: by literal path, with an empty message."""
    if streaming:
        return list(channel.unary_stream(path)(b"", timeout=10))
    return [channel.unary_unary(path)(b"", timeout=10)]


@pytest.mark.parametrize("path", [p for paths in UPSTREAM_METHOD_PATHS.values() for p in paths])
def test_upstream_method_path_is_served_over_unix_socket(uds_channel: grpc.Channel, path: str) -> None:
    replies = _call_raw(uds_channel, path, streaming=path.endswith("/NodeWatchResources"))
    assert replies == [b""]


def test_unknown_method_path_is_unimplemented(uds_channel: grpc.Channel) -> None:
    # Control for the test above: a near-miss path (advertised name, not service name) fails.
    with pytest.raises(grpc.RpcError) as caught:
        _call_raw(uds_channel, "/v1.DRAPlugin/NodePrepareResources", streaming=False)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _run_script(script: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(script)], cwd=root, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def grpc_tools_available() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is needed to regenerate driver/_proto")


@pytest.mark.usefixtures("grpc_tools_available")
def test_verify_proto_passes_on_committed_tree() -> None:
    done = _run_script(REPO_ROOT / "hack" / "verify-proto.sh", REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.usefixtures("grpc_tools_available")
def test_verify_proto_fails_when_a_proto_changes(tmp_path: Path) -> None:
    for name in ("hack", "proto", "driver/_proto"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proto = tmp_path / "proto" / "dra" / "v1" / "api.proto"
    proto.write_text(proto.read_text().replace("string device_name = 3;", "string device_name = 6;"))

    done = _run_script(tmp_path / "hack" / "verify-proto.sh", tmp_path)

    assert done.returncode != 0
    assert "driver/_proto/ is stale" in done.stderr
