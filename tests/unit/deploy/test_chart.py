"""The Helm chart (charts/accel-dra), rendered offline by Helm's own engine (helm-python-sdk).

Skipped with the reason when helm-python-sdk (the ``chart`` extra) is not installed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from driver import DEFAULT_DRIVER_NAME
from driver.resources.deviceclasses import DEFAULT_MIG_PROFILES
from tests.support.chart import CHART, find, helm_missing, load_values, render, render_templates
from tests.support.deploy_checks import (
    allocate_all,
    check_admission_policy,
    check_daemonset,
    check_rbac,
    containers,
    flags,
    host_paths,
    mounts,
    schema_errors,
)

pytestmark = pytest.mark.skipif(bool(helm_missing()), reason=helm_missing() or "")

FAKE = load_values(CHART / "ci" / "fake-values.yaml")
FULL = load_values(CHART / "ci" / "full-values.yaml")
MINIMAL: dict[str, Any] = {
    "exporter": {"enabled": False},
    "plugin": {"metricsPort": 0},
    "metrics": {"service": {"enabled": False}},
    "deviceClasses": {"mig": {"enabled": False}},
}
NO_API_EXPORTER: dict[str, Any] = {
    "exporter": {"kubeApi": False, "podResources": False, "processAttribution": False}
}
EXPORTER_ONLY = load_values(CHART / "ci" / "exporter-only-values.yaml")
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fake": FAKE,
    "full": FULL,
    "minimal": MINIMAL,
    "exporter-without-api": NO_API_EXPORTER,
    "exporter-only": EXPORTER_ONLY,
}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.34.0-0"
    assert chart["apiVersion"] == "v2"
    from driver import __version__

    assert chart["appVersion"] == __version__, "the chart must deploy the image of this version"


@pytest.mark.parametrize("kube_version", ["v1.36.0", "v1.37.0"])
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_is_clean(values: str, kube_version: str) -> None:
    import helm_python

    report = helm_python.lint(str(CHART), VALUE_SETS[values], strict=True, kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (report["errors"], problems) == ([], [])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "cuda"}, "/backend"),
        ({"backend": "file:/tmp/x.yaml"}, "/backend"),
        ({"driverName": "GPU_Driver"}, "/driverName"),
        ({"driverRoot": "run/nvidia"}, "/driverRoot"),
        ({"exporter": {"port": 0}}, "/exporter/port"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"metrics": {"serviceMonitor": {"enabled": True, "intervall": "30s"}}}, "intervall"),
        ({"unknownKey": 1}, "unknownKey"),
        (
            {"deviceClasses": {"migProfiles": {"profiles": ["1g 5gb"]}}},
            "/deviceClasses/migProfiles/profiles/0",
        ),
        ({"deviceClasses": {"migProfiles": {"extendedResourcePrefix": "mig-"}}}, "extendedResourcePrefix"),
        ({"deviceClasses": {"gpu": {"extendedResourceName": "kubernetes gpu"}}}, "extendedResourceName"),
        ({"plugin": {"hostMemoryPerPod": "two gigs"}}, "/plugin/hostMemoryPerPod"),
        ({"plugin": {"sharing": {"memoryStep": "0"}}}, "/plugin/sharing/memoryStep"),
        ({"plugin": {"sharing": {"gpus": ["a,b"]}}}, "/plugin/sharing/gpus/0"),
        ({"plugin": {"mig": {"mode": "auto"}}}, "/plugin/mig/mode"),
        ({"plugin": {"mig": {"gpus": {"0000:3b:00.0": "partitioned"}}}}, "/plugin/mig/gpus"),
        ({"plugin": {"mig": {"gpus": {"nvidia0": "dynamic"}}}}, "invalid propertyName 'nvidia0'"),
    ],
)
def test_the_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render(values)


def test_every_value_in_values_yaml_is_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, sch: dict[str, Any], path: str) -> None:
        if "$ref" in sch:
            sch = schema["definitions"][sch["$ref"].rsplit("/", 1)[-1]]
        if isinstance(node, dict) and "properties" in sch:
            for key, value in node.items():
                assert key in sch["properties"], f"{path}.{key} is not described in values.schema.json"
                walk(value, sch["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_object_validates_against_the_kubernetes_schemas(
    renders: dict[str, list[dict[str, Any]]], values: str
) -> None:
    objects = renders[values]
    assert objects
    assert schema_errors(objects) == []


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rbac_is_exactly_what_the_code_calls(renders: dict[str, list[dict[str, Any]]], values: str) -> None:
    settings = {**VALUE_SETS[values].get("exporter", {})}
    exporter_api = settings.get("enabled", True) and settings.get("kubeApi", True)
    check_rbac(
        renders[values],
        prefix="accel-dra",
        namespace="accel-dra",
        service_account="accel-dra",
        exporter_api=exporter_api,
        driver=VALUE_SETS[values].get("driverName", DEFAULT_DRIVER_NAME),
        plugin=VALUE_SETS[values].get("plugin", {}).get("enabled", True),
    )


def test_rbac_follows_release_name_and_namespace() -> None:
    objects = render({}, name="gpu", namespace="gpu-system")
    check_rbac(
        objects,
        prefix="gpu-accel-dra",
        namespace="gpu-system",
        service_account="gpu-accel-dra",
        exporter_api=True,
    )
    check_admission_policy(objects, namespace="gpu-system", service_account="gpu-accel-dra")


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_admission_policy_confines_the_plugin_to_its_own_node(
    renders: dict[str, list[dict[str, Any]]], values: str
) -> None:
    if not VALUE_SETS[values].get("plugin", {}).get("enabled", True):
        assert not [o for o in renders[values] if o["kind"].startswith("ValidatingAdmissionPolicy")]
        return
    check_admission_policy(renders[values], namespace="accel-dra", service_account="accel-dra")


def test_the_admission_policy_can_be_turned_off() -> None:
    objects = render({"validatingAdmissionPolicy": {"enabled": False}})
    assert not [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]
    notes = render_templates({"validatingAdmissionPolicy": {"enabled": False}})[
        "accel-dra/templates/NOTES.txt"
    ]
    assert "can write every node's ResourceSlices" in notes


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_daemonset_invariants(renders: dict[str, list[dict[str, Any]]], values: str) -> None:
    settings = VALUE_SETS[values]
    image = settings.get("image", {})
    check_daemonset(
        renders[values],
        driver=settings.get("driverName", "gpu.accel-dra.dev"),
        kubelet_dir=settings.get("kubeletDir", "/var/lib/kubelet"),
        image=f"{image.get('repository', 'accel-dra')}:{image.get('tag', '0.1.0')}",
        fake=values == "fake",
        exporter=settings.get("exporter", {}).get("enabled", True),
        plugin=settings.get("plugin", {}).get("enabled", True),
    )


def test_default_daemonset_runs_on_gpu_nodes(renders: dict[str, list[dict[str, Any]]]) -> None:
    pod = find(renders["default"], "DaemonSet")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = {expr["key"] for term in terms for expr in term["matchExpressions"]}
    assert keys == {"feature.node.kubernetes.io/pci-10de.present", "nvidia.com/gpu.present"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    fake_pod = find(renders["fake"], "DaemonSet")["spec"]["template"]["spec"]
    assert fake_pod["affinity"]["nodeAffinity"] == FAKE["nodeAffinity"]
    assert "tolerations" not in fake_pod


def test_real_gpus_need_privileged_containers_and_the_driver_root(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    ds = find(renders["default"], "DaemonSet")
    ctrs = containers(ds)
    assert ctrs["plugin"]["securityContext"]["privileged"] is True  # NVML and nvidia-smi open /dev/nvidia*
    assert ctrs["exporter"]["securityContext"]["privileged"] is True
    assert host_paths(ds)["driver-root"] == "/"
    assert mounts(ctrs["exporter"])["driver-root"]["mountPath"] == "/driver-root"
    # The GPU Operator's driver container root is mounted where it is on the host.
    full = find(renders["full"], "DaemonSet")
    assert host_paths(full)["driver-root"] == "/run/nvidia/driver"
    assert mounts(containers(full)["plugin"])["driver-root"]["mountPropagation"] == "HostToContainer"


def test_exporter_without_api_access_or_kubelet_socket_runs_as_non_root(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    exporter = containers(find(renders["exporter-without-api"], "DaemonSet"))["exporter"]
    assert exporter["securityContext"]["runAsNonRoot"] is True
    assert exporter["securityContext"]["runAsUser"] == 65532
    assert "kube-api-access" not in mounts(exporter)
    assert flags(exporter["args"])["--kube-api"] == "off"
    assert flags(exporter["args"])["--pod-resources-socket"] == ""
    # The plugin keeps its token: it cannot work without the API server.
    assert "kube-api-access" in mounts(
        containers(find(renders["exporter-without-api"], "DaemonSet"))["plugin"]
    )


def test_plugin_metrics_port_is_served_and_exposed(renders: dict[str, list[dict[str, Any]]]) -> None:
    plugin = containers(find(renders["default"], "DaemonSet"))["plugin"]
    assert flags(plugin["args"])["--metrics-listen"] == ":9401"
    service = find(renders["default"], "Service")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("metrics", 9400, "metrics"),
        ("plugin-metrics", 9401, "plugin-metrics"),
    }
    minimal = find(renders["minimal"], "DaemonSet")
    assert "--metrics-listen" not in flags(containers(minimal)["plugin"]["args"])
    assert not [o for o in renders["minimal"] if o["kind"] == "Service"]


def test_device_classes_select_on_driver_and_type(renders: dict[str, list[dict[str, Any]]]) -> None:
    classes = [o for o in renders["default"] if o["kind"] == "DeviceClass"]
    names = {c["metadata"]["name"] for c in classes}
    assert {"gpu.accel-dra.dev", "mig.accel-dra.dev"} < names
    assert names - {"gpu.accel-dra.dev", "mig.accel-dra.dev"} == {
        f"{p}.mig.accel-dra.dev" for p in DEFAULT_MIG_PROFILES
    }
    # Evaluated with the scheduler-equivalent allocator on the devices the plugin publishes.
    dgx_gpus = allocate_all("gpu.accel-dra.dev", classes, "dgx-h100")
    assert len(dgx_gpus) == 8 and all("mig" not in d for d in dgx_gpus)
    assert allocate_all("mig.accel-dra.dev", classes, "dgx-h100") == []
    mig = allocate_all("mig.accel-dra.dev", classes, "mig-a100")
    assert len(mig) == 4 and all("-mig-" in d for d in mig)
    assert (
        allocate_all("gpu.accel-dra.dev", classes, "mig-a100") == []
    )  # only its MIG devices are allocatable
    # Another driver's devices never match.
    other = [
        {**c, "spec": json.loads(json.dumps(c["spec"]).replace("gpu.accel-dra.dev", "gpu.other.dev"))}
        for c in classes
    ]
    assert allocate_all("gpu.accel-dra.dev", other, "dgx-h100") == []

    full = {o["metadata"]["name"]: o for o in renders["full"] if o["kind"] == "DeviceClass"}
    assert {"gpu.example.com", "mig.example.com", "1g.5gb.mig.example.com"} <= set(full)
    assert full["gpu.example.com"]["spec"]["extendedResourceName"] == "example.com/gpu"
    assert [o["metadata"]["name"] for o in renders["minimal"] if o["kind"] == "DeviceClass"] == [
        "gpu.accel-dra.dev"
    ]


def test_extended_resources_are_on_by_default_one_class_per_mig_profile(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    classes = {o["metadata"]["name"]: o for o in renders["default"] if o["kind"] == "DeviceClass"}
    extended = {name: c["spec"].get("extendedResourceName") for name, c in classes.items()}
    assert extended["gpu.accel-dra.dev"] == "nvidia.com/gpu"
    assert extended["mig.accel-dra.dev"] is None
    assert extended["1g.5gb.mig.accel-dra.dev"] == "nvidia.com/mig-1g.5gb"
    assert len(set(extended.values())) == len(extended), "one class per extended resource"
    # A profile's class admits exactly the MIG devices of that profile.
    listed = list(classes.values())
    assert allocate_all("1g.5gb.mig.accel-dra.dev", listed, "mig-a100") == [
        "gpu-0000-07-00-0-mig-1g-5gb-2",
        "gpu-0000-07-00-0-mig-1g-5gb-3",
    ]
    assert allocate_all("3g.20gb.mig.accel-dra.dev", listed, "mig-a100") == ["gpu-0000-07-00-0-mig-3g-20gb-4"]
    assert allocate_all("1g.5gb.mig.accel-dra.dev", listed, "dgx-h100") == []


def test_mig_profile_classes_follow_the_values(renders: dict[str, list[dict[str, Any]]]) -> None:
    values = {
        "deviceClasses": {
            "gpu": {"extendedResourceName": ""},
            "migProfiles": {"extendedResourcePrefix": "", "profiles": ["1g.10gb+me", "1c.2g.20gb"]},
        }
    }
    classes = {o["metadata"]["name"]: o for o in render(values) if o["kind"] == "DeviceClass"}
    assert set(classes) == {
        "gpu.accel-dra.dev",
        "mig.accel-dra.dev",
        "1g.10gb.me.mig.accel-dra.dev",
        "1c.2g.20gb.mig.accel-dra.dev",
    }
    assert all("extendedResourceName" not in c["spec"] for c in classes.values())
    assert "profile == '1g.10gb+me'" in json.dumps(classes["1g.10gb.me.mig.accel-dra.dev"]["spec"])
    off = render({"deviceClasses": {"migProfiles": {"enabled": False}}})
    assert [o["metadata"]["name"] for o in off if o["kind"] == "DeviceClass"] == [
        "gpu.accel-dra.dev",
        "mig.accel-dra.dev",
    ]
    no_mig = render({"deviceClasses": {"mig": {"enabled": False}}})
    assert [o["metadata"]["name"] for o in no_mig if o["kind"] == "DeviceClass"] == ["gpu.accel-dra.dev"]


def test_service_monitor_and_dashboard(renders: dict[str, list[dict[str, Any]]]) -> None:
    assert not [o for o in renders["default"] if o["kind"] in ("ServiceMonitor", "ConfigMap")]
    monitor = find(renders["full"], "ServiceMonitor")
    service = find(renders["full"], "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in service["spec"]["ports"]}
    dashboard = find(renders["full"], "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["accel-dra-gpus.json"])["uid"] == "accel-dra-gpus"


def test_dashboard_queries_only_metrics_and_labels_the_code_serves() -> None:
    from driver.exporter import names

    specs = names.by_name()
    dashboard = json.loads((CHART / "dashboards" / "accel-dra-gpus.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used: set[str] = set()
    grouping = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")
    for expr in exprs:
        selectors = re.findall(r"\{([^}]*)\}", expr)
        groups = grouping.findall(expr)
        bare = grouping.sub("", re.sub(r"\{[^}]*\}", "", expr))
        metrics = set()
        for metric in re.findall(r"\b((?:hw|accel_dra)_[a-z0-9_]+)\b", bare):
            base = metric if metric in specs else re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in specs, f"{metric} in {expr!r} is not a metric the exporter or plugin serves"
            metrics.add(base)
        known = {"le", "instance", "job"}.union(*(specs[m].labels for m in metrics))  # + scrape target labels
        labels = [
            lb for sel in selectors for lb in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", sel)
        ]
        labels += [lb.strip() for g in groups for lb in g.split(",") if lb.strip()]
        assert set(labels) <= known, f"{expr!r} uses labels {set(labels) - known} its metrics do not have"
        used |= metrics
    # The headline metrics of docs/metrics.md are on the dashboard.
    assert {
        "hw_gpu_utilization_ratio",
        "hw_gpu_memory_usage_bytes",
        "hw_power_watts",
        "hw_temperature_celsius",
    } <= used


def test_notes_render_for_every_value_set() -> None:
    for values in VALUE_SETS.values():
        notes = render_templates(values)["accel-dra/templates/NOTES.txt"]
        if values.get("plugin", {}).get("enabled", True):
            assert "kubectl get resourceslices --field-selector spec.driver=" in notes
        else:
            assert "only the GPU exporter runs" in notes and "resourceslices" not in notes


def test_the_exporter_runs_alone_with_the_plugin_off(renders: dict[str, list[dict[str, Any]]]) -> None:
    objects = renders["exporter-only"]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    service = find(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    monitor = find(objects, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    with pytest.raises(Exception, match="nothing to deploy"):
        render({"plugin": {"enabled": False}, "exporter": {"enabled": False}})


def test_service_monitor_keeps_gpu_series_free_of_the_targets_pod_labels(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    """The Operator labels targets with the scraped pod's namespace/pod/container: dropped for the exporter,
    whose series carry their own (tests/integration/test_dashboards.py scrapes with the Operator's labels)."""
    (exporter, plugin) = find(renders["full"], "ServiceMonitor")["spec"]["endpoints"]
    assert (exporter["port"], exporter["honorLabels"]) == ("metrics", False)
    assert {"action": "labeldrop", "regex": "namespace|pod|container"} in exporter["relabelings"]
    assert plugin["port"] == "plugin-metrics" and "honorLabels" not in plugin


def _rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = find(render({"metrics": {"prometheusRule": values}}), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_prometheus_rule_groups_follow_the_values() -> None:
    assert [g["name"] for g in _rule_groups({"enabled": True})] == ["accel-dra-gpus"]
    both = _rule_groups({"enabled": True, "dcgmCompatibility": {"enabled": True}})
    assert [g["name"] for g in both] == ["accel-dra-gpus", "accel-dra-dcgm-compatibility"]
    exported = _rule_groups(
        {
            "enabled": True,
            "alerts": {"enabled": False},
            "dcgmCompatibility": {"enabled": True, "exportedLabels": True},
        }
    )
    assert [g["name"] for g in exported] == ["accel-dra-dcgm-compatibility"]
    assert (
        "exported_pod" in exported[0]["rules"][1]["expr"]
        and "exported_pod" not in both[1]["rules"][1]["expr"]
    )
    thresholds = _rule_groups({"enabled": True, "alerts": {"temperatureCelsius": 77, "xidEvents": 3}})[0]
    exprs = {r["alert"]: r["expr"] for r in thresholds["rules"]}
    assert exprs["AccelDraGPUTemperatureHigh"].endswith("> 77")
    assert exprs["AccelDraGPUXidErrors"].endswith("> 3")
    assert not [
        o
        for o in render({"metrics": {"prometheusRule": {"enabled": True, "alerts": {"enabled": False}}}})
        if o["kind"] == "PrometheusRule"
    ]


def test_every_top_level_value_is_documented() -> None:
    install = (CHART.parents[1] / "docs" / "install.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in install]
    assert missing == [], "docs/install.md does not describe these values"


def test_alpha_slice_fields_are_off_by_default_and_follow_the_values(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    default = flags(containers(find(renders["default"], "DaemonSet"))["plugin"]["args"])
    assert "--list-attributes" not in default and "--host-memory-per-pod" not in default
    values = {"plugin": {"listTypeAttributes": True, "hostMemoryPerPod": "2Gi"}}
    on = flags(containers(find(render(values), "DaemonSet"))["plugin"]["args"])
    assert (on["--list-attributes"], on["--host-memory-per-pod"]) == ("on", "2Gi")


def test_device_metadata_is_on_by_default_and_can_be_turned_off(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    default = flags(containers(find(renders["default"], "DaemonSet"))["plugin"]["args"])
    assert "--device-metadata" not in default  # the plugin's default: on
    off = flags(
        containers(find(render({"plugin": {"deviceMetadata": False}}), "DaemonSet"))["plugin"]["args"]
    )
    assert off["--device-metadata"] == "off"


def test_state_fsync_is_off_by_default_and_follows_the_value(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    default = flags(containers(find(renders["default"], "DaemonSet"))["plugin"]["args"])
    assert "--state-fsync" not in default  # the plugin's default: off
    on = flags(containers(find(render({"plugin": {"stateFsync": True}}), "DaemonSet"))["plugin"]["args"])
    assert on["--state-fsync"] == "on"


def test_gpu_sharing_follows_the_values(renders: dict[str, list[dict[str, Any]]]) -> None:
    default = flags(containers(find(renders["default"], "DaemonSet"))["plugin"]["args"])
    assert "--shared-gpus" not in default
    values = {"plugin": {"sharing": {"gpus": ["gpu-0000-01-00-0", "GPU-1234"], "memoryStep": "512Mi"}}}
    on = flags(containers(find(render(values), "DaemonSet"))["plugin"]["args"])
    assert (on["--shared-gpus"], on["--share-memory-step"]) == ("gpu-0000-01-00-0,GPU-1234", "512Mi")


def test_mig_modes_become_the_plugins_flag_and_the_plugin_accepts_it() -> None:
    from driver.config import PluginConfig
    from tests.support.deploy_checks import container_environment, parse_plugin_args

    values = {"plugin": {"mig": {"mode": "off", "gpus": {"GPU-1a2b": "static", "0000:3b:00.0": "dynamic"}}}}
    plugin = containers(find(render(values), "DaemonSet"))["plugin"]
    assert flags(plugin["args"])["--mig-mode"] == "off,0000:3b:00.0=dynamic,GPU-1a2b=static"
    with container_environment({"NODE_NAME": "n"}):
        config = PluginConfig.from_args(parse_plugin_args(plugin["args"], {"NODE_NAME": "n"}))
    assert str(config.mig_modes) == "off,0000:3b:00.0=dynamic,gpu-1a2b=static"
    default = containers(find(render({}), "DaemonSet"))["plugin"]
    assert flags(default["args"])["--mig-mode"] == "static"


def test_simulated_gpus_share_their_state_with_the_exporter() -> None:
    ctrs = containers(find(render(FAKE), "DaemonSet"))
    state = "/var/lib/kubelet/plugins/gpu.accel-dra.dev/fake-state"
    assert flags(ctrs["plugin"]["args"])["--fake-state-dir"] == state
    assert flags(ctrs["exporter"]["args"])["--fake-state-dir"] == state
    assert mounts(ctrs["exporter"])["plugin-dir"]["readOnly"] is True
    real = containers(find(render({}), "DaemonSet"))["plugin"]
    assert "--fake-state-dir" not in flags(real["args"])
