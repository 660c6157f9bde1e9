"""An in-memory cluster for the probes whose APIs the sandbox does not serve: HPA with the custom-metrics API,
Kueue, RuntimeClasses.

It answers the calls a :class:`~driver.conformance.context.ProbeContext` makes (``create``, ``get``, ``list``,
``request``, ``request_text``) and runs small, faithful controllers each time the probe's clock sleeps:

* pods are bound and Running at once; their containers' ``sh`` scripts really run (``/bin/sh``), so what
  they print is real; a pod with a RuntimeClass runs with a ``uname`` that reports the sandbox's kernel;
* a Deployment keeps ``spec.replicas`` pods; the HPA controller computes what Kubernetes' does --
  ``desiredReplicas = ceil(currentReplicas * currentAverage / targetAverage)``, clamped to min/max, with
  the ``AbleToScale``, ``ScalingActive`` and ``ScalingLimited`` conditions and their reasons -- from the
  per-pod values the custom-metrics API serves, and scales the Deployment;
* Kueue admits a suspended Job whose queue-name label names a LocalQueue only when all its pods fit the
  ClusterQueue's CPU quota (all or nothing), unsuspends it, runs its pods to completion and counts them.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from driver.conformance.apis import DEPLOYMENTS, HPAS, JOBS
from driver.kube.client import PODS, ApiError, ResourceType
from driver.quantity import parse_quantity

JSON = dict[str, Any]
SH = shutil.which("sh") or "/bin/sh"
#: The custom metric's value per pod (name -> value), as an adapter would serve it.
MetricSource = Callable[[Mapping[str, Any]], float | None]


def _matches(labels: Mapping[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in (p.split("=", 1) for p in selector.split(",")))


class FakeCluster:
    def __init__(
        self,
        *,
        groups: Mapping[str, Sequence[str]] = {},
        metric: MetricSource | None = None,
        sandbox_kernel: str | None = None,
    ) -> None:
        #: "group/version" -> resource names served (discovery).
        self.groups = {k: list(v) for k, v in groups.items()}
        self.metric = metric
        self.sandbox_kernel = sandbox_kernel
        self.objects: dict[tuple[str, str, str], JSON] = {}  # (plural, namespace, name) -> object
        self.logs: dict[tuple[str, str], str] = {}
        self.host = "fake"
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-cluster-"))

    # -- the client's surface --------------------------------------------------------------------

    async def create(self, rt: ResourceType, body: Mapping[str, Any], namespace: str | None = None) -> JSON:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["namespace"] = namespace or ""
        key = (rt.plural, namespace or "", meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f"{rt.plural} {meta['name']} already exists")
        self.objects[key] = obj
        self.tick()
        return copy.deepcopy(self.objects.get(key, obj))

    async def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> JSON:
        obj = self.objects.get((rt.plural, namespace or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.plural} "{name}" not found')
        return copy.deepcopy(obj)

    async def list(
        self, rt: ResourceType, namespace: str | None = None, *, label_selector: str | None = None, **_: Any
    ) -> JSON:
        items = [
            copy.deepcopy(o)
            for (plural, ns, _name), o in self.objects.items()
            if plural == rt.plural
            and (namespace is None or ns == namespace)
            and _matches((o.get("metadata") or {}).get("labels") or {}, label_selector)
        ]
        return {"items": items}

    async def delete(self, rt: ResourceType, name: str, namespace: str | None = None, **_: Any) -> JSON:
        self._remove(rt.plural, namespace or "", name)
        return {}

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> JSON:
        parts = path.split("?", maxsplit=1)[0].strip("/").split("/")
        if method == "GET" and len(parts) == 3 and parts[0] == "apis":
            key = f"{parts[1]}/{parts[2]}"
            if key not in self.groups:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"resources": [{"name": n} for n in self.groups[key]]}
        if method == "GET" and parts[:2] == ["apis", "custom.metrics.k8s.io"]:
            return self._custom_metrics(path)
        if method == "DELETE":
            namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
            self._remove(parts[-2], namespace, parts[-1])
            return {}
        raise ApiError(404, "NotFound", f"the fake cluster does not serve {method} {path}")

    async def request_text(self, method: str, path: str, **_: Any) -> str:
        parts = path.split("?", maxsplit=1)[0].strip("/").split("/")
        container = path.rsplit("container=", maxsplit=1)[-1]
        text = self.logs.get((parts[-2], container))
        if text is None:
            raise ApiError(400, "BadRequest", f"container {container} is waiting to start")
        return text

    # -- controllers -----------------------------------------------------------------------------

    def tick(self) -> None:
        self._deployments()
        self._hpas()
        self._kueue()
        self._pods()

    def _remove(self, plural: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((plural, namespace, name), None)
        if obj is None:
            return
        owner = obj["metadata"]["uid"]
        for key, child in list(self.objects.items()):
            if key[0] == "pods" and owner in {
                r.get("uid") for r in child["metadata"].get("ownerReferences", [])
            }:
                self.objects.pop(key)

    def _pods(self) -> None:
        for (plural, _ns, name), pod in self.objects.items():
            if plural != "pods" or (pod.get("status") or {}).get("phase"):
                continue
            pod["spec"]["nodeName"] = "node-a"
            pod["status"] = {"phase": "Running"}
            for container in pod["spec"]["containers"]:
                self.logs[(name, container["name"])] = self._run(
                    container, pod["spec"].get("runtimeClassName")
                )

    def _run(self, container: Mapping[str, Any], runtime_class: str | None) -> str:
        """Run the container's script for real, up to its "RESULT: DONE": the keep-alive tail is cut off, and
        the waits and workloads that would follow it (``sleep N``, ``exec <load>``) are not run."""
        script = container["command"][-1].split("sleep 3600 &")[0].replace("exec ", "true ")
        script = re.sub(r"\bsleep [0-9]+", ":", script)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if runtime_class:  # a sandbox: its own kernel
            bin_dir = self._tmp / runtime_class
            bin_dir.mkdir(exist_ok=True)
            (bin_dir / "uname").write_text(f"#!{SH}\necho {self.sandbox_kernel}\n")
            (bin_dir / "uname").chmod(0o755)
            env["PATH"] = f"{bin_dir}:{env['PATH']}"
        result = subprocess.run(
            [SH, "-c", script], capture_output=True, text=True, env=env, timeout=20, check=False
        )
        return result.stdout

    def _owned_pods(self, owner: JSON) -> list[JSON]:
        uid = owner["metadata"]["uid"]
        return [
            p for (plural, _, _), p in self.objects.items()
            if plural == "pods" and uid in {r.get("uid") for r in p["metadata"].get("ownerReferences", [])}
        ]  # fmt: skip

    def _new_pod(self, owner: JSON, kind: str, template: JSON, index: int) -> None:
        name = f"{owner['metadata']['name']}-{index}"
        pod = {
            "kind": "Pod",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "namespace": owner["metadata"]["namespace"],
                "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                "ownerReferences": [
                    {"kind": kind, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
        }
        self.objects[("pods", owner["metadata"]["namespace"], name)] = pod

    def _deployments(self) -> None:
        for (plural, _, _), deploy in list(self.objects.items()):
            if plural != "deployments":
                continue
            pods = self._owned_pods(deploy)
            for index in range(len(pods), int(deploy["spec"]["replicas"])):
                self._new_pod(deploy, "Deployment", deploy["spec"]["template"], index)
            deploy["status"] = {"replicas": len(self._owned_pods(deploy))}

    def _pod_metric(self, pod: Mapping[str, Any]) -> float | None:
        return self.metric(pod) if self.metric is not None else None

    def _custom_metrics(self, path: str) -> JSON:
        selector = (
            path.rsplit("labelSelector=", maxsplit=1)[-1].replace("%3D", "=").replace("%2F", "/")
            if "labelSelector" in path
            else None
        )
        namespace = path.split("/namespaces/")[1].split("/", maxsplit=1)[0]
        items = []
        for (plural, ns, name), pod in self.objects.items():
            if (
                plural == "pods"
                and ns == namespace
                and _matches(pod["metadata"].get("labels") or {}, selector)
            ):
                value = self._pod_metric(pod)
                if value is not None:
                    items.append(
                        {"describedObject": {"kind": "Pod", "name": name}, "value": f"{round(value * 1000)}m"}
                    )
        return {"kind": "MetricValueList", "items": items}

    def _hpas(self) -> None:
        for (plural, ns, _), hpa in list(self.objects.items()):
            if plural != "horizontalpodautoscalers":
                continue
            spec = hpa["spec"]
            target = self.objects.get(("deployments", ns, spec["scaleTargetRef"]["name"]))
            if target is None:
                hpa["status"] = {
                    "conditions": [
                        {
                            "type": "AbleToScale",
                            "status": "False",
                            "reason": "FailedGetScale",
                            "message": "deployment not found",
                        }
                    ]
                }
                continue
            metric = spec["metrics"][0]["pods"]
            pods = self._owned_pods(target)
            values = [v for p in pods if (v := self._pod_metric(p)) is not None]
            current = int(target["spec"]["replicas"])
            if not values:
                hpa["status"] = {
                    "currentReplicas": current,
                    "desiredReplicas": current,
                    "conditions": [
                        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": ""},
                        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
                         "message": f"unable to get metric {metric['metric']['name']}: no metrics returned"},
                    ],
                }  # fmt: skip
                continue
            average = sum(values) / len(values)
            wanted = float(parse_quantity(metric["target"]["averageValue"]))
            desired = math.ceil(current * average / wanted) if wanted else current
            limited = min(max(desired, spec.get("minReplicas", 1)), spec["maxReplicas"])
            hpa["status"] = {
                "currentReplicas": current,
                "desiredReplicas": limited,
                "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": metric["metric"]["name"]}, "current": {"averageValue": f"{round(average * 1000)}m"}}}],
                "conditions": [
                    {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "message": ""},
                    {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": ""},
                    {"type": "ScalingLimited", "status": str(limited != desired), "reason": "TooManyReplicas" if limited < desired else "DesiredWithinRange", "message": ""},
                ],
            }  # fmt: skip
            target["spec"]["replicas"] = limited

    def _kueue(self) -> None:
        for (plural, ns, _), job in list(self.objects.items()):
            if plural != "jobs" or not job["spec"].get("suspend"):
                if plural == "jobs":
                    self._finish_job(job)
                continue
            labels = job["metadata"].get("labels") or {}
            queue = self.objects.get(("localqueues", ns, labels.get("kueue.x-k8s.io/queue-name", "")))
            if queue is None:
                continue
            cq = self.objects.get(("clusterqueues", "", queue["spec"]["clusterQueue"])) or {}
            quota = sum(
                float(parse_quantity(str(r["nominalQuota"])))
                for g in cq.get("spec", {}).get("resourceGroups", [])
                for f in g.get("flavors", [])
                for r in f.get("resources", [])
                if r["name"] == "cpu"
            )
            cpu = float(
                parse_quantity(
                    job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
                )
            )
            if cpu * job["spec"]["parallelism"] <= quota:  # all or nothing
                job["spec"]["suspend"] = False
                for index in range(job["spec"]["parallelism"]):
                    self._new_pod(job, "Job", job["spec"]["template"], index)

    def _finish_job(self, job: JSON) -> None:
        pods = self._owned_pods(job)
        for pod in pods:
            if (pod.get("status") or {}).get("phase") == "Running":
                pod["status"]["phase"] = "Succeeded"
        job["status"] = {"succeeded": sum((p.get("status") or {}).get("phase") == "Succeeded" for p in pods)}


__all__ = ["DEPLOYMENTS", "HPAS", "JOBS", "PODS", "FakeCluster"]
