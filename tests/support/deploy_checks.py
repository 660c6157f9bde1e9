"""Checks shared by the chart and kustomize tests: what any rendering of accel-dra must satisfy.

They take the list of rendered objects, so the Helm render and the kustomize build are held to exactly the
same rules: schemas of the supported Kubernetes versions, RBAC equal to what the code calls, the admission
policy bound and correct, the DaemonSet's paths, probes, update strategy and security settings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from driver import DEFAULT_DRIVER_NAME
from driver.plugin.paths import dra_socket_path, registration_socket_path
from driver.sim.admission import evaluate
from tests.support.chart import JSON, find
from tests.support.rbac import Permission, component_permissions, permissions_of_rules

KUBERNETES_VERSIONS = ("1.36.0", "1.37.0")
#: Kinds from CRDs, which the built-in schemas do not know (checked structurally by the tests).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def schema_errors(
    objects: Iterable[Mapping[str, Any]], versions: Sequence[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Strict validation against the built-in OpenAPI schemas: one line per failure."""
    import kubernetes_validate

    errors: list[str] = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as err:
                first = str(err).splitlines()[0]
                errors.append(
                    f"{version} {obj['kind']}/{obj['metadata'].get('name')}: {first} at {list(err.path)}"
                )
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{version} {obj['kind']}: no schema for {obj.get('apiVersion')}")
    return errors


# -- RBAC ---------------------------------------------------------------------------------------------


def role_permissions(objects: Sequence[Mapping[str, Any]], role: str) -> set[Permission]:
    cluster_role = find(objects, "ClusterRole", role)
    for rule in cluster_role["rules"]:
        assert "nonResourceURLs" not in rule, rule
        # Only the granular status permission is limited to names (the driver's).
        assert "resourceNames" not in rule or rule["resources"] == ["resourceclaims/driver"], rule
        assert "*" not in [*rule["verbs"], *rule["resources"], *rule["apiGroups"]], (
            f"wildcard in {role}: {rule}"
        )
    return permissions_of_rules(cluster_role["rules"])


def check_rbac(
    objects: Sequence[Mapping[str, Any]],
    *,
    prefix: str,
    namespace: str,
    service_account: str,
    exporter_api: bool,
    driver: str = DEFAULT_DRIVER_NAME,
    plugin: bool = True,
) -> None:
    """Each component's ClusterRole holds exactly what its code calls (and what the API server checks
    besides for ``driver``), bound to the pod's service account."""
    needed = component_permissions(driver)
    expected = set()
    if plugin:
        assert role_permissions(objects, f"{prefix}-plugin") == needed["plugin"]
        expected.add(f"{prefix}-plugin")
    if exporter_api:
        assert role_permissions(objects, f"{prefix}-exporter") == needed["exporter"]
        expected.add(f"{prefix}-exporter")
    roles = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"}
    assert roles == expected
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    for binding in (o for o in objects if o["kind"] == "ClusterRoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": binding["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
        ]
    bound = {o["roleRef"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"}
    assert bound == roles


# -- admission policy -----------------------------------------------------------------------------------


def _cel(expression: str, activation: Mapping[str, Any]) -> Any:
    """Evaluate one policy expression as the sandbox API server's admission does (JSON values, typed dyn)."""
    return evaluate(expression, activation)


def admits(
    policy: Mapping[str, Any], request: Mapping[str, Any], obj: Any, old: Any
) -> tuple[bool, list[str]]:
    """Evaluate the policy as the API server does: match conditions, variables in order, validations."""
    activation: dict[str, Any] = {"request": request, "object": obj, "oldObject": old}
    spec = policy["spec"]
    if not all(bool(_cel(c["expression"], activation)) for c in spec.get("matchConditions", [])):
        return True, []
    variables: dict[str, Any] = {}
    for var in spec.get("variables", []):
        variables[var["name"]] = _cel(var["expression"], {**activation, "variables": variables})
    activation["variables"] = variables
    failed = []
    for validation in spec["validations"]:
        if not bool(_cel(validation["expression"], activation)):
            failed.append(str(_cel(validation["messageExpression"], activation)))
    return not failed, failed


def check_admission_policy(
    objects: Sequence[Mapping[str, Any]], *, namespace: str, service_account: str
) -> None:
    policy = find(objects, "ValidatingAdmissionPolicy")
    binding = find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["resource.k8s.io"] and rule["resources"] == ["resourceslices"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}

    plugin = f"system:serviceaccount:{namespace}:{service_account}"

    def request(user: str, node: str | None, operation: str) -> JSON:
        extra = {NODE_NAME_EXTRA: [node]} if node else {}
        return {"operation": operation, "userInfo": {"username": user, "extra": extra}}

    def slice_of(node: str) -> JSON:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "spec": {"nodeName": node}}

    own, other = slice_of("node-a"), slice_of("node-b")
    for op in ("CREATE", "UPDATE"):
        assert admits(policy, request(plugin, "node-a", op), own, own if op == "UPDATE" else None)[0]
        allowed, why = admits(policy, request(plugin, "node-a", op), other, None)
        assert not allowed and "only of node node-a, not of node node-b" in why[0]
    assert admits(policy, request(plugin, "node-a", "DELETE"), None, own)[0]
    assert not admits(policy, request(plugin, "node-a", "DELETE"), None, other)[0]
    # A token not bound to a node (e.g. a long-lived secret token) writes nothing.
    assert not admits(policy, request(plugin, None, "CREATE"), own, None)[0]
    # A slice for all nodes is never this node's.
    all_nodes = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "spec": {"allNodes": True}}
    assert not admits(policy, request(plugin, "node-a", "CREATE"), all_nodes, None)[0]
    # Other identities (the kubelet, controllers, admins) are not this policy's business.
    assert admits(policy, request("system:node:node-a", None, "DELETE"), None, other)[0]
    assert admits(
        policy, request(f"system:serviceaccount:{namespace}:other", "node-a", "CREATE"), other, None
    )[0]


# -- DaemonSet ----------------------------------------------------------------------------------------


def containers(ds: Mapping[str, Any]) -> dict[str, JSON]:
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def flags(args: Sequence[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (later ones win, as with argparse)."""
    out: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def parse_plugin_args(args: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    """The plugin container's arguments through the plugin's real flag parser and config checks."""
    from driver.config import PluginConfig, add_plugin_arguments

    assert args[0] == "plugin"
    with container_environment(env):
        parser = argparse.ArgumentParser(exit_on_error=False)
        add_plugin_arguments(parser)
        parsed = parser.parse_args(list(args[1:]))
        PluginConfig.from_args(parsed)
    return parsed


def parse_exporter_args(args: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    from driver.exporter.options import ExporterConfig, add_exporter_arguments

    assert args[0] == "exporter"
    with container_environment(env):
        parser = argparse.ArgumentParser(exit_on_error=False)
        add_exporter_arguments(parser)
        parsed = parser.parse_args(list(args[1:]))
        ExporterConfig.from_args(parsed)
    return parsed


def parse_probe_args(command: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    from driver.plugin.probe import add_probe_arguments

    assert list(command[:2]) == ["accel-dra", "plugin-probe"]
    with container_environment(env):
        parser = argparse.ArgumentParser(exit_on_error=False)
        add_probe_arguments(parser)
        return parser.parse_args(list(command[2:]))


@contextlib.contextmanager
def container_environment(env: Mapping[str, str]) -> Iterator[None]:
    """The container's environment while its flags are parsed (flags default from env)."""
    names = ("NODE_NAME", "POD_UID", "DRIVER_NAME", "DEVICE_BACKEND", "DRIVER_ROOT", "KUBECONFIG")
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ.update(env)
    try:
        yield
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update({name: value for name, value in saved.items() if value is not None})


def downward_env(container: Mapping[str, Any]) -> dict[str, str]:
    """Field paths of the downward-API env vars."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container.get("env", [])
        if "fieldRef" in e.get("valueFrom", {})
    }


def host_paths(ds: Mapping[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v
    }


def mounts(container: Mapping[str, Any]) -> dict[str, JSON]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def check_daemonset(
    objects: Sequence[Mapping[str, Any]],
    *,
    driver: str,
    kubelet_dir: str = "/var/lib/kubelet",
    image: str,
    fake: bool,
    exporter: bool = True,
    plugin: bool = True,
) -> JSON:
    """The DaemonSet invariants; returns the DaemonSet for further checks."""
    ds = find(objects, "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    assert spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["automountServiceAccountToken"] is False
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    ctrs = containers(ds)
    assert set(ctrs) == {name for name, on in (("plugin", plugin), ("exporter", exporter)) if on}
    for c in ctrs.values():
        assert c["image"] == image
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    volumes = host_paths(ds)
    if not plugin:
        # The exporter alone: nothing of the plugin's (sockets, CDI, its state) is mounted or needed.
        assert not {"plugins-registry", "plugin-dir", "cdi"} & set(volumes)
        assert "--health-state-file" not in " ".join(ctrs["exporter"]["args"])
        check_exporter(ctrs["exporter"], volumes, driver=driver, kubelet_dir=kubelet_dir)
        return ds

    plugin = ctrs["plugin"]
    assert downward_env(plugin) == {"NODE_NAME": "spec.nodeName", "POD_UID": "metadata.uid"}
    registry = f"{kubelet_dir}/plugins_registry"
    plugin_dir = f"{kubelet_dir}/plugins/{driver}"
    args = parse_plugin_args(plugin["args"], {"NODE_NAME": "node-a", "POD_UID": "uid-1"})
    assert (args.driver_name, args.registry_dir, args.plugin_dir) == (driver, registry, plugin_dir)
    assert args.backend.startswith("fake:") == fake

    # hostPath volumes are mounted where they are on the host: the kubelet dials the socket paths the plugin
    # advertises, and CDI specs name host paths. The driver root "/" is the one exception (see below).
    for container in ctrs.values():
        for name, mount in mounts(container).items():
            if name in volumes and name not in ("driver-root", "host-proc"):
                assert mount["mountPath"] == volumes[name], f"{container['name']}: {name} mounted elsewhere"
    plugin_mounts = {m["mountPath"] for m in plugin["volumeMounts"]}
    assert {registry, plugin_dir, args.cdi_dir} <= plugin_mounts
    assert {volumes["plugins-registry"], volumes["plugin-dir"], volumes["cdi"]} == {
        registry,
        plugin_dir,
        args.cdi_dir,
    }
    if fake:
        assert "driver-root" not in volumes
        for c in ctrs.values():
            assert not c["securityContext"].get("privileged"), f"{c['name']} is privileged with fake devices"
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    else:
        root_mount = mounts(plugin)["driver-root"]
        assert root_mount["readOnly"] is True
        host_root = volumes["driver-root"]
        env = {e["name"]: e.get("value") for e in plugin["env"]}
        if host_root == "/":
            assert root_mount["mountPath"] == args.driver_root == "/driver-root"
            assert env["HOST_DRIVER_ROOT"] == "/"
        else:
            assert root_mount["mountPath"] == args.driver_root == host_root
            assert "HOST_DRIVER_ROOT" not in env

    check_plugin_probes(plugin, args)
    if exporter:
        check_exporter(ctrs["exporter"], volumes, driver=driver, kubelet_dir=kubelet_dir)
    return ds


def check_plugin_probes(plugin: Mapping[str, Any], args: argparse.Namespace) -> None:
    """The probe command computes the socket paths the plugin serves, for the same pod UID."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = plugin[kind]
        env = {"POD_UID": "7d9e6f1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"}
        probe_args = parse_probe_args(probe["exec"]["command"], env)
        assert probe_args.pod_uid == env["POD_UID"], (
            "the probe must take the pod UID from the container's env"
        )
        assert registration_socket_path(
            probe_args.registry_dir, probe_args.driver_name, probe_args.pod_uid
        ) == (registration_socket_path(args.registry_dir, args.driver_name, env["POD_UID"]))
        assert dra_socket_path(probe_args.plugin_dir, probe_args.driver_name, probe_args.pod_uid) == (
            dra_socket_path(args.plugin_dir, args.driver_name, env["POD_UID"])
        )
        assert probe_args.timeout < probe["timeoutSeconds"], "the probe must give up before the kubelet does"


def check_exporter(
    exporter: Mapping[str, Any], volumes: Mapping[str, str], *, driver: str, kubelet_dir: str
) -> None:
    assert downward_env(exporter) == {"NODE_NAME": "spec.nodeName"}
    args = parse_exporter_args(exporter["args"], {"NODE_NAME": "node-a"})
    assert args.driver_name == driver
    port = next(p for p in exporter["ports"] if p["name"] == "metrics")["containerPort"]
    assert args.listen == f":{port}"
    for kind in ("readinessProbe", "livenessProbe"):
        assert exporter[kind]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    exporter_mounts = mounts(exporter)
    assert all(m.get("readOnly") for m in exporter_mounts.values()), "the exporter writes nothing"
    if args.pod_resources_socket:
        assert args.pod_resources_socket == f"{kubelet_dir}/pod-resources/kubelet.sock"
        assert (
            exporter_mounts["pod-resources"]["mountPath"]
            == volumes["pod-resources"]
            == f"{kubelet_dir}/pod-resources"
        )
    else:
        assert "pod-resources" not in exporter_mounts
    security = exporter["securityContext"]
    if not args.pod_resources_socket:
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert ("kube-api-access" in exporter_mounts) == (args.kube_api == "on")
    if args.proc_root != "/proc":
        assert volumes["host-proc"] == "/proc" and exporter_mounts["host-proc"]["mountPath"] == args.proc_root


# -- devices of a simulated node -------------------------------------------------------------------------


def fake_slices(
    profile: str, *, driver: str = "gpu.accel-dra.dev", node: str = "node-1", mig_mode: str = "static"
) -> list[JSON]:
    """The ResourceSlices the plugin publishes for ``fake:<profile>`` on ``node`` (``--mig-mode``)."""
    from driver.resources.cli import discovered_slices

    parts = discovered_slices(f"fake:{profile}", driver, node, mig_mode=mig_mode)
    for i, part in enumerate(parts):
        part["metadata"] = {"name": f"{node}-{driver}-{i}"}
        part["spec"]["pool"]["generation"] = 0
    return parts


def one_slice(devices: Sequence[JSON], *, driver: str = "gpu.accel-dra.dev", node: str = "n") -> JSON:
    """A ResourceSlice of ``node`` holding ``devices``, its pool's only slice."""
    from driver.resources.slices import slice_spec

    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-slice"},
        "spec": slice_spec(driver, node, 1, 1, devices),
    }


def allocate_all(device_class: str, classes: Sequence[Mapping[str, Any]], profile: str) -> list[str]:
    """Devices of ``fake:<profile>`` that ``device_class`` admits (one claim asking for all of them)."""
    from driver.allocation.allocator import allocate

    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "all", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "all", "exactly": {"deviceClassName": device_class, "allocationMode": "All"}}
                ]
            }
        },
    }
    result = allocate([claim], fake_slices(profile), classes, "node-1")
    if not result.ok:
        return []
    allocation = result.allocation_for("default/all")
    assert allocation is not None
    return sorted(r["device"] for r in allocation["devices"]["results"])
