"""CDI as a container runtime sees it: loading spec files, resolving ids, merging edits, planning mounts.

Specs are hand-written here (independent of the project's CDI writer) and loaded from real directories.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from driver.sim.cdi_registry import (
    CdiError,
    CdiRegistry,
    ContainerEdits,
    DeviceNode,
    Hook,
    Mount,
    UnresolvableDevicesError,
    parse_qualified_name,
    parse_spec,
)
from driver.sim.runtime import apply_edits, merge_env, plan_filesystem

KIND = "k8s.gpu.accel-dra.dev/gpu"


def gpu_spec(
    claim: str, minors: list[int], *, spec_env: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A claim spec shaped like the SANDBOX contract: one device per GPU, control nodes at spec level."""
    spec: dict[str, Any] = {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "containerEdits": {
            "env": spec_env or [f"SPEC_OF_{claim.upper()}=yes"],
            "deviceNodes": [{"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}],
        },
        "devices": [
            {
                "name": f"{claim}-gpu{m}",
                "containerEdits": {
                    "env": [f"ACCEL_DRA_DEVICE_GPU{m}=GPU-{m}"],
                    "deviceNodes": [{"path": f"/dev/nvidia{m}", "type": "c", "major": 195, "minor": m}],
                },
            }
            for m in minors
        ],
    }
    spec.update(extra)
    return spec


def write(directory: Path, name: str, spec: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if isinstance(spec, str):
        path.write_text(spec)
    elif name.endswith(".yaml"):
        path.write_text(yaml.safe_dump(spec))
    else:
        path.write_text(json.dumps(spec))
    return path


def loaded(tmp_path: Path, *dirs: str) -> CdiRegistry:
    registry = CdiRegistry([tmp_path / d for d in dirs])
    registry.refresh()
    return registry


# --- parsing and validation ---------------------------------------------------------------------------


def test_json_and_yaml_specs_load_with_qualified_names(tmp_path: Path) -> None:
    write(tmp_path / "run", "a.json", gpu_spec("c1", [0]))
    write(tmp_path / "run", "b.yaml", gpu_spec("c2", [1, 2]))
    registry = loaded(tmp_path, "run")
    assert registry.errors() == {}
    assert registry.device_names() == [f"{KIND}=c1-gpu0", f"{KIND}=c2-gpu1", f"{KIND}=c2-gpu2"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(extra=1), "unknown field 'extra'"),
        (lambda s: s["devices"][0].update(bogus=True), "unknown field 'devices[0].bogus'"),
        (
            lambda s: s["containerEdits"].update(capabilities=[]),
            "unknown field 'containerEdits.capabilities'",
        ),
        (
            lambda s: s["devices"][0]["containerEdits"]["deviceNodes"][0].update(mode=1),
            "unknown field 'devices[0].containerEdits.deviceNodes[0].mode'",
        ),
        (lambda s: s.update(cdiVersion="0.9.0"), "invalid version '0.9.0'"),
        (lambda s: s.update(cdiVersion="2.0.0"), "invalid version '2.0.0'"),
        (lambda s: s.update(kind="gpu"), "invalid vendor"),
        (lambda s: s.update(kind="-bad/gpu"), "invalid vendor '-bad'"),
        (lambda s: s.update(devices=[]), "no devices"),
        (lambda s: s["devices"].append(dict(s["devices"][0])), "multiple device 'c-gpu0'"),
        (lambda s: s["devices"][0].update(containerEdits={}), "empty container edits"),
        (lambda s: s["devices"][0].update(name="bad name"), "invalid device name 'bad name'"),
        (lambda s: s["containerEdits"].update(env=["NOEQUALS"]), "invalid environment variable 'NOEQUALS'"),
        (
            lambda s: s["containerEdits"].update(hooks=[{"hookName": "preStart", "path": "/bin/true"}]),
            "invalid hook name 'preStart'",
        ),
        (lambda s: s["containerEdits"]["deviceNodes"][0].update(type="x"), "invalid type 'x'"),
        (lambda s: s["containerEdits"]["deviceNodes"][0].update(major=-1), "negative"),
        (lambda s: s["containerEdits"]["deviceNodes"][0].update(permissions="rwx"), "invalid permissions"),
        (
            lambda s: s["containerEdits"].update(mounts=[{"hostPath": "/x", "containerPath": ""}]),
            "empty container path",
        ),
        (lambda s: s["containerEdits"]["deviceNodes"][0].update(major="195"), "expected an integer"),
    ],
)
def test_invalid_specs_are_rejected(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    spec = gpu_spec("c", [0])
    parse_spec(json.dumps(spec), "/cdi/x.json")  # valid before the change
    mutate(spec)
    with pytest.raises(CdiError, match="CDI spec /cdi/x.json: .*" + re.escape(message)):
        parse_spec(json.dumps(spec), "/cdi/x.json")


@pytest.mark.parametrize(
    ("version", "mutate", "needed"),
    [
        ("0.3.0", lambda s: s["devices"][0].update(name="0abc"), "0.5.0"),
        ("0.4.0", lambda s: s["containerEdits"]["deviceNodes"][0].update(hostPath="/dev/x"), "0.5.0"),
        (
            "0.3.0",
            lambda s: s["containerEdits"].update(
                mounts=[{"hostPath": "/a", "containerPath": "/b", "type": "bind"}]
            ),
            "0.4.0",
        ),
        ("0.5.0", lambda s: s.update(annotations={"a": "b"}), "0.6.0"),
        ("0.5.0", lambda s: s.update(kind="example.com/gpu.v2"), "0.6.0"),
        ("0.6.0", lambda s: s["containerEdits"].update(additionalGids=[44]), "0.7.0"),
        (
            "1.0.0",
            lambda s: s["containerEdits"].update(netDevices=[{"hostInterfaceName": "a", "name": "b"}]),
            "1.1.0",
        ),
    ],
)
def test_version_must_cover_the_features_used(
    version: str, mutate: Callable[[dict[str, Any]], None], needed: str
) -> None:
    spec = gpu_spec("c", [0], cdiVersion=version)
    mutate(spec)
    with pytest.raises(CdiError, match=f"at least v{needed}"):
        parse_spec(json.dumps(spec), "/cdi/x.json")
    spec["cdiVersion"] = needed
    parse_spec(json.dumps(spec), "/cdi/x.json")


def test_field_names_match_case_insensitively_like_go() -> None:
    spec = gpu_spec("c", [0])
    spec["CDIVersion"] = spec.pop("cdiVersion")
    assert parse_spec(json.dumps(spec), "/cdi/x.json").version == "0.5.0"


def test_qualified_name_parsing() -> None:
    assert parse_qualified_name(f"{KIND}=abc-gpu0") == ("k8s.gpu.accel-dra.dev", "gpu", "abc-gpu0")
    for bad in ("gpu0", "vendor/class", "/dev/nvidia0", "vendor=x", "v/c=-x", "1v/c=x"):
        with pytest.raises(CdiError):
            parse_qualified_name(bad)


# --- the registry --------------------------------------------------------------------------------------


def test_later_directory_overrides_earlier(tmp_path: Path) -> None:
    write(tmp_path / "etc", "static.json", gpu_spec("c", [0], spec_env=["FROM=etc"]))
    write(tmp_path / "run", "dynamic.json", gpu_spec("c", [0], spec_env=["FROM=run"]))
    registry = loaded(tmp_path, "etc", "run")
    device = registry.device(f"{KIND}=c-gpu0")
    assert device is not None and device.spec.path.endswith("run/dynamic.json")
    assert "FROM=run" in registry.resolve([f"{KIND}=c-gpu0"]).env
    assert registry.errors() == {}

    reversed_order = loaded(tmp_path, "run", "etc")
    assert "FROM=etc" in reversed_order.resolve([f"{KIND}=c-gpu0"]).env


def test_conflict_within_one_directory_drops_the_device_and_reports_both_files(tmp_path: Path) -> None:
    first = write(tmp_path / "run", "a.json", gpu_spec("c", [0, 1]))
    second = write(tmp_path / "run", "b.yaml", gpu_spec("c", [0]))
    registry = loaded(tmp_path, "run")
    assert registry.device(f"{KIND}=c-gpu0") is None
    assert registry.device(f"{KIND}=c-gpu1") is not None  # only the conflicting name is lost
    errors = registry.errors()
    assert set(errors) == {str(first), str(second)}
    assert all("conflicting device" in e[0] for e in errors.values())


def test_a_conflicted_name_stays_dropped_even_if_a_later_directory_defines_it(tmp_path: Path) -> None:
    # The CDI library remembers conflicts across the whole scan and removes those names at the end.
    write(tmp_path / "etc", "a.json", gpu_spec("c", [0]))
    write(tmp_path / "etc", "b.json", gpu_spec("c", [0]))
    write(tmp_path / "run", "c.json", gpu_spec("c", [0, 1]))
    registry = loaded(tmp_path, "etc", "run")
    assert registry.device_names() == [f"{KIND}=c-gpu1"]


def test_a_broken_file_only_loses_its_own_devices(tmp_path: Path) -> None:
    write(tmp_path / "run", "good.json", gpu_spec("good", [0]))
    bad = write(tmp_path / "run", "bad.json", gpu_spec("bad", [1], cdiVersion="9.9.9"))
    garbage = write(tmp_path / "run", "garbage.yaml", "{: not yaml")
    registry = loaded(tmp_path, "run")
    assert registry.device_names() == [f"{KIND}=good-gpu0"]
    assert set(registry.errors()) == {str(bad), str(garbage)}
    assert "invalid version '9.9.9'" in registry.errors()[str(bad)][0]
    with pytest.raises(UnresolvableDevicesError) as info:
        registry.resolve([f"{KIND}=good-gpu0", f"{KIND}=bad-gpu1"])
    assert str(info.value) == f"unresolvable CDI devices {KIND}=bad-gpu1"
    assert str(bad) in info.value.spec_errors


def test_only_json_and_yaml_files_at_the_top_level_are_read(tmp_path: Path) -> None:
    write(tmp_path / "run", "spec.json", gpu_spec("a", [0]))
    write(tmp_path / "run", "spec.yml", gpu_spec("b", [1]))
    write(tmp_path / "run", "spec.json.tmp", gpu_spec("c", [2]))
    write(tmp_path / "run" / "sub", "nested.json", gpu_spec("d", [3]))
    registry = loaded(tmp_path, "run", "missing-dir")
    assert registry.device_names() == [f"{KIND}=a-gpu0"]
    assert registry.errors() == {}


def test_refresh_sees_added_changed_and_removed_files(tmp_path: Path) -> None:
    registry = CdiRegistry([tmp_path])
    registry.refresh()
    assert registry.device_names() == []
    path = write(tmp_path, "claim.json", gpu_spec("c", [0]))
    registry.refresh()
    assert registry.device_names() == [f"{KIND}=c-gpu0"]
    write(tmp_path, "claim.json", gpu_spec("c", [0, 1], spec_env=["CHANGED=1"]))
    registry.refresh()
    assert registry.device_names() == [f"{KIND}=c-gpu0", f"{KIND}=c-gpu1"]
    assert "CHANGED=1" in registry.resolve([f"{KIND}=c-gpu1"]).env
    path.unlink()
    registry.refresh()
    assert registry.device_names() == []


def test_resolve_applies_spec_edits_once_per_spec_then_device_edits(tmp_path: Path) -> None:
    write(tmp_path, "one.json", gpu_spec("one", [0, 1]))
    write(tmp_path, "two.json", gpu_spec("two", [2]))
    registry = loaded(tmp_path, ".")
    edits = registry.resolve([f"{KIND}=one-gpu1", f"{KIND}=two-gpu2", f"{KIND}=one-gpu0"])
    assert edits.env == (
        "SPEC_OF_ONE=yes",
        "ACCEL_DRA_DEVICE_GPU1=GPU-1",
        "SPEC_OF_TWO=yes",
        "ACCEL_DRA_DEVICE_GPU2=GPU-2",
        "ACCEL_DRA_DEVICE_GPU0=GPU-0",
    )
    # Spec-level edits only come with a device of that spec.
    assert "SPEC_OF_TWO=yes" not in registry.resolve([f"{KIND}=one-gpu0"]).env
    assert registry.resolve([]) == ContainerEdits()


def test_unresolvable_lists_every_missing_id(tmp_path: Path) -> None:
    registry = loaded(tmp_path, ".")
    with pytest.raises(UnresolvableDevicesError, match=f"^unresolvable CDI devices {KIND}=x, {KIND}=y$"):
        registry.resolve([f"{KIND}=x", f"{KIND}=y"])


# --- applying edits ------------------------------------------------------------------------------------


def node(path: str, minor: int, **kw: Any) -> DeviceNode:
    return DeviceNode(path=path, type="c", major=195, minor=minor, **kw)


def test_env_replaces_in_place_and_cdi_wins() -> None:
    edits = ContainerEdits(env=("PATH=/cdi", "NEW=1", "NEW=2"))
    config = apply_edits(["PATH=/usr/bin", "HOME=/root"], edits)
    assert config.env == ("PATH=/cdi", "HOME=/root", "NEW=2")


@given(
    st.dictionaries(st.sampled_from("ABCD"), st.text(max_size=3)),
    st.lists(st.tuples(st.sampled_from("CDEF"), st.text(max_size=3))),
)
def test_merge_env_is_a_dict_update_in_first_seen_order(
    base: dict[str, str], extra: list[tuple[str, str]]
) -> None:
    merged = merge_env([f"{k}={v}" for k, v in base.items()], [f"{k}={v}" for k, v in extra])
    expected = base | dict(extra)
    assert [item.partition("=")[0] for item in merged] == list(expected)
    assert dict(item.partition("=")[::2] for item in merged) == expected


def test_device_nodes_later_wins_per_path() -> None:
    edits = ContainerEdits(
        device_nodes=(node("/dev/nvidia0", 0), node("/dev/nvidiactl", 255), node("/dev/nvidia0", 9))
    )
    config = apply_edits([], edits)
    assert [(n.path, n.minor) for n in config.device_nodes] == [("/dev/nvidiactl", 255), ("/dev/nvidia0", 9)]
    assert all(n.host_path == n.path for n in config.device_nodes)


def test_device_nodes_without_numbers_are_filled_from_the_host() -> None:
    config = apply_edits(
        [], ContainerEdits(device_nodes=(DeviceNode(path="/dev/mynull", host_path="/dev/null"),))
    )
    st_null = os.stat("/dev/null")
    filled = config.device_nodes[0]
    assert (filled.type, filled.major, filled.minor) == (
        "c",
        os.major(st_null.st_rdev),
        os.minor(st_null.st_rdev),
    )
    with pytest.raises(CdiError, match="failed to stat CDI host device '/dev/nvidia-does-not-exist'"):
        apply_edits([], ContainerEdits(device_nodes=(DeviceNode(path="/dev/nvidia-does-not-exist"),)))
    with pytest.raises(CdiError, match="host type mismatch"):
        apply_edits([], ContainerEdits(device_nodes=(DeviceNode(path="/dev/null", type="b"),)))


def test_mounts_deduplicated_by_target_and_ordered_by_depth() -> None:
    mounts = (
        Mount("/h/a", "/usr/lib/x/liba.so"),
        Mount("/h/b", "/opt"),
        Mount("/h/c", "/usr/bin/tool"),
        Mount("/h/d", "/usr/lib/x/liba.so"),  # replaces the first
        Mount("/h/e", "/srv"),
    )
    config = apply_edits([], ContainerEdits(mounts=mounts))
    assert [(m.host_path, m.container_path) for m in config.mounts] == [
        ("/h/b", "/opt"),
        ("/h/e", "/srv"),
        ("/h/c", "/usr/bin/tool"),
        ("/h/d", "/usr/lib/x/liba.so"),
    ]


def test_hooks_grouped_in_order_and_gids_deduplicated() -> None:
    hooks = (
        Hook("createContainer", "/a"),
        Hook("poststop", "/b"),
        Hook("createContainer", "/c"),
    )
    config = apply_edits([], ContainerEdits(hooks=hooks, additional_gids=(44, 0, 44, 45)))
    assert [h.path for h in config.hooks["createContainer"]] == ["/a", "/c"]
    assert [h.path for h in config.hooks["poststop"]] == ["/b"]
    assert config.additional_gids == (44, 45)


# --- planning the container's filesystem ----------------------------------------------------------------


def probe_of(tree: dict[str, str]) -> Callable[[str], str | None]:
    """A host with exactly these paths (plus their parent directories)."""
    kinds = dict(tree)
    for path in tree:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            kinds.setdefault(parent, "dir")
            parent = os.path.dirname(parent)
    kinds["/"] = "dir"
    return kinds.get


def cdi_ops(ops: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The plan minus the standard /dev setup."""
    out = []
    for op in ops:
        dev_setup = op["op"] in ("devpts", "symlink") or op.get("target", "").startswith("/dev")
        if op.get("standard") or (dev_setup and op["op"] != "mknod"):
            continue
        out.append((op["op"], op.get("target") or op["path"]))
    return out


def plan(mounts: list[Mount], nodes: list[DeviceNode], host: dict[str, str]) -> list[tuple[str, str]]:
    config = apply_edits([], ContainerEdits(mounts=tuple(mounts), device_nodes=tuple(nodes)))
    return cdi_ops(plan_filesystem(config, probe_of(host)))


BIND = ("ro", "nosuid", "nodev", "bind")


def test_plan_binds_existing_targets_and_overlays_missing_ones() -> None:
    host = {
        "/drv/usr/bin/nvidia-smi": "file",
        "/drv/lib/libcuda.so.1": "file",
        "/drv/lib/libnvidia-ml.so.1": "file",
        "/usr/lib/x86_64-linux-gnu/libc.so.6": "file",
        "/usr/bin/ls": "file",
        "/state": "dir",
    }
    steps = plan(
        [
            Mount("/drv/lib/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", BIND),
            Mount("/drv/lib/libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", BIND),
            Mount("/drv/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi", BIND),
            Mount("/state", "/state", ("rw", "bind")),
        ],
        [node("/dev/nvidia0", 0)],
        host,
    )
    assert steps == [
        ("bind", "/state"),  # exists: no overlay
        ("overlay", "/usr/bin"),
        ("create", "/usr/bin/nvidia-smi"),
        ("bind", "/usr/bin/nvidia-smi"),
        ("overlay", "/usr/lib/x86_64-linux-gnu"),
        ("create", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        ("bind", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        ("create", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),  # same overlay: no second one
        ("bind", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
        ("mknod", "/dev/nvidia0"),  # /dev is the container's own tmpfs
    ]


def test_plan_overlays_the_deepest_existing_ancestor() -> None:
    host = {"/src/tool": "file", "/opt/keep": "file"}
    steps = plan([Mount("/src/tool", "/opt/vendor/bin/tool", BIND)], [], host)
    assert steps == [
        ("overlay", "/opt"),
        ("create", "/opt/vendor/bin/tool"),
        ("bind", "/opt/vendor/bin/tool"),
    ]


def test_plan_looks_through_earlier_directory_binds() -> None:
    host = {"/drv/share/file.txt": "file", "/data/x": "file", "/src/f": "file"}
    steps = plan(
        [Mount("/drv/share", "/data", BIND), Mount("/src/f", "/data/file.txt", BIND)],
        [],
        host,
    )
    # /data/file.txt exists in the bound source, so it is mounted over without creating anything.
    assert steps == [("bind", "/data"), ("bind", "/data/file.txt")]


def test_plan_device_nodes_outside_dev_get_an_overlay() -> None:
    steps = plan([], [node("/run/custom/dev0", 7)], {"/run/other": "file"})
    assert steps == [("overlay", "/run"), ("mknod", "/run/custom/dev0")]


@pytest.mark.parametrize(
    ("mount", "host", "message"),
    [
        (Mount("/missing", "/usr/bin/x", BIND), {"/usr/bin/ls": "file"}, "source does not exist"),
        (Mount("/src/f", "/newtop/x", BIND), {"/src/f": "file"}, "host's /"),
        (Mount("/src/f", "/usr/bin", BIND), {"/src/f": "file", "/usr/bin/ls": "file"}, "target is a dir"),
        (Mount("/src/f", "/usr/bin/x", ("ro",)), {"/src/f": "file", "/usr/bin/ls": "file"}, "no mount type"),
    ],
)
def test_plan_refuses_what_would_fail_or_touch_the_host(
    mount: Mount, host: dict[str, str], message: str
) -> None:
    with pytest.raises(CdiError, match=message):
        plan([mount], [], host)


def test_plan_starts_with_a_private_dev() -> None:
    config = apply_edits([], ContainerEdits(device_nodes=(node("/dev/nvidia0", 0),)))
    ops = plan_filesystem(config, probe_of({}))
    assert ops[0] == {
        "op": "tmpfs",
        "target": "/dev",
        "flags": ["nosuid", "strictatime"],
        "data": "mode=755,size=65536k",
    }
    standard = [op["path"] for op in ops if op.get("standard")]
    assert standard == ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    assert ops[-1]["op"] == "mknod" and ops[-1]["path"] == "/dev/nvidia0"
