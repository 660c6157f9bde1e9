"""Our kubelet protocol definitions against the kubelet's own, field by field.

The kubelet's .proto files come from the Go module proxy by name (``k8s.io/kubelet`` at the release the
real-cluster tier builds), are compiled here with the pinned protoc, and every package, message, field
(name, number, type, label, proto3 ``optional``, message type), enum value and RPC (name, types,
streaming) is compared with the descriptors of ``driver._proto``. Comments, ``reserved`` statements and
option lines are not part of the wire and are not compared.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

KUBELET_MODULE = "k8s.io/kubelet@v0.37.2"

# Our generated package -> the upstream file under pkg/apis/ of k8s.io/kubelet.
UPSTREAM_FILES = {
    "driver._proto.pluginregistration.v1": "pluginregistration/v1/api.proto",
    "driver._proto.dra.v1": "dra/v1/api.proto",
    "driver._proto.dra.v1beta1": "dra/v1beta1/api.proto",
    "driver._proto.dra_health.v1alpha1": "dra-health/v1alpha1/api.proto",
    "driver._proto.dra_health.v1": "dra-health/v1/api.proto",
    "driver._proto.podresources.v1": "podresources/v1/api.proto",
}


@pytest.fixture(scope="module")
def kubelet_apis() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is needed to fetch the kubelet's protos from the module proxy")
    done = subprocess.run(
        [go, "mod", "download", "-json", KUBELET_MODULE],
        cwd="/",  # outside any module: a plain download
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"go mod download {KUBELET_MODULE}: {done.stdout}{done.stderr}"
    return Path(json.loads(done.stdout)["Dir"]) / "pkg" / "apis"


def _compile(path: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{path.parent}", f"--descriptor_set_out={out}", str(path)])
    assert code == 0, f"protoc failed on {path}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file,) = files.file
    return file


def _fields(message: descriptor_pb2.DescriptorProto) -> list[tuple[Any, ...]]:
    return sorted(
        (f.name, f.number, f.type, f.label, f.type_name, f.proto3_optional, f.HasField("oneof_index"))
        for f in message.field
    )


def _messages(messages: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for message in messages:
        name = f"{prefix}{message.name}"
        out[name] = {
            "fields": _fields(message),
            "map_entry": message.options.map_entry,
            "enums": {e.name: [(v.name, v.number) for v in e.value] for e in message.enum_type},
        }
        out.update(_messages(message.nested_type, f"{name}."))
    return out


def _shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    return {
        "package": file.package,
        "syntax": file.syntax,
        "messages": _messages(file.message_type),
        "enums": {e.name: [(v.name, v.number) for v in e.value] for e in file.enum_type},
        "services": {
            s.name: [
                (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                for m in s.method
            ]
            for s in file.service
        },
    }


def _ours(package: str) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(f"{package}.api_pb2").DESCRIPTOR.CopyToProto(file)
    return file


@pytest.mark.parametrize("package", sorted(UPSTREAM_FILES))
def test_the_protocol_is_the_kubelets_field_by_field(
    package: str, kubelet_apis: Path, tmp_path: Path
) -> None:
    upstream = _shape(_compile(kubelet_apis / UPSTREAM_FILES[package], tmp_path / "set.pb"))
    assert _shape(_ours(package)) == upstream


def test_every_kubelet_plugin_api_we_speak_is_compared(kubelet_apis: Path) -> None:
    # The DRA-related directories of the release: a new version of one of them needs a decision here.
    present = {
        str(p.relative_to(kubelet_apis))
        for d in ("dra", "dra-health", "podresources", "pluginregistration")
        for p in (kubelet_apis / d).glob("*/api.proto")
    }
    skipped = {
        "podresources/v1alpha1/api.proto",  # superseded by v1, which the kubelet serves alongside
        "pluginregistration/v1alpha1/api.proto",  # the kubelet registers plugins through v1 only
        "pluginregistration/v1beta1/api.proto",
    }
    assert present - skipped == set(UPSTREAM_FILES.values())
