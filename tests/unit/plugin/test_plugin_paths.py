"""Socket naming: the kubelet's conventions, rolling-update names, and the short-name fallback."""

from __future__ import annotations

import os

import pytest

from driver.plugin.paths import UNIX_PATH_MAX, SocketPathError, dra_socket_path, registration_socket_path

UID = "5bcb2a1e-1c0c-4a3c-9d8e-0c1f2a3b4c5d"


def test_default_names_match_kubelet_conventions() -> None:
    assert (
        registration_socket_path("/var/lib/kubelet/plugins_registry", "gpu.accel-dra.dev")
        == "/var/lib/kubelet/plugins_registry/gpu.accel-dra.dev-reg.sock"
    )
    assert dra_socket_path("/var/lib/kubelet/plugins/gpu.accel-dra.dev", "gpu.accel-dra.dev") == (
        "/var/lib/kubelet/plugins/gpu.accel-dra.dev/dra.sock"
    )


def test_pod_uid_names_for_rolling_update() -> None:
    assert registration_socket_path("/r", "gpu.accel-dra.dev", UID) == f"/r/gpu.accel-dra.dev-{UID}-reg.sock"
    assert dra_socket_path("/p", "gpu.accel-dra.dev", UID) == f"/p/dra-{UID}.sock"


def test_long_paths_fall_back_to_short_hashed_names_that_fit() -> None:
    driver = "gpu.dra-example-driver.sigs.k8s.io"
    registry = "/var/lib/kubelet/plugins_registry"
    plugin_dir = f"/var/lib/kubelet/plugins/{driver}/state"
    reg = registration_socket_path(registry, driver, UID)
    dra = dra_socket_path(plugin_dir, driver, UID)
    assert len(os.fsencode(f"{registry}/{driver}-{UID}-reg.sock")) > UNIX_PATH_MAX
    assert len(os.fsencode(f"{plugin_dir}/dra-{UID}.sock")) > UNIX_PATH_MAX
    for path in (reg, dra):
        assert len(os.fsencode(path)) <= UNIX_PATH_MAX
        assert UID not in path
    assert reg.endswith("-reg.sock") and os.path.dirname(reg) == registry
    assert os.path.dirname(dra) == plugin_dir


def test_hashed_names_are_stable_and_distinct_per_pod() -> None:
    driver = "gpu.dra-example-driver.sigs.k8s.io"
    registry = "/var/lib/kubelet/plugins_registry"
    other = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert registration_socket_path(registry, driver, UID) == registration_socket_path(registry, driver, UID)
    assert registration_socket_path(registry, driver, UID) != registration_socket_path(
        registry, driver, other
    )
    plugin_dir = "/var/lib/kubelet/plugins/" + "x" * 40
    assert dra_socket_path(plugin_dir, driver, UID) != dra_socket_path(plugin_dir, driver, other)


def test_directory_too_long_for_any_name_is_a_clear_error() -> None:
    with pytest.raises(SocketPathError, match="exceeds 107 bytes"):
        dra_socket_path("/" + "d" * 120, "gpu.accel-dra.dev")
