"""Probe pods and claims as data, and what their containers print.

Probe containers run a plain POSIX ``sh`` script in the vendor's probe image (on a real cluster any small
distribution image; in the sandbox the host's ``sh``), plus the vendor's own tool where a check needs it.
They print ``RESULT: KEY=VALUE``, ``DEVICE: <path>`` and ``IDENTITY: <id>`` lines, then ``RESULT: DONE``,
and then stay alive until the pod is deleted, so the claim stays allocated while the probe inspects it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.conformance.vendor import Vendor

JSON = dict[str, Any]
DONE = "RESULT: DONE"
_RESULT_RE = re.compile(r"^RESULT: ([A-Z_]+)=(.*)$")
#: Deletion stops a probe container at once: pid 1 ignores signals it has no handler for, so the script
#: handles SIGTERM itself (installed first, so no signal arrives before it) and waits interruptibly.
ON_TERM = "trap 'kill $! 2>/dev/null; exit 0' TERM INT"
KEEP_ALIVE = "sleep 3600 &\nwait $!"


def device_script(vendor: Vendor, *, identity: bool = True, always_identify: bool = False) -> str:
    """Lists the accelerator device nodes the container sees and, when there are any, their ids.

    The matches of the vendor's first glob are counted (one per accelerator: ``/dev/nvidia0``,
    ``/dev/dri/renderD128``); the other globs' matches (``/dev/kfd``, ``/dev/dri/card0``) are listed too, so a
    container that should see no accelerator must list nothing at all.
    ``always_identify``: ask the vendor's tool even without device nodes (a container that should see no
    accelerator: any id it reports is one it can reach).
    """
    first, *others = vendor.device_globs
    lines = [
        "n=0",
        f"for f in {first}; do",
        '  [ -e "$f" ] || continue',
        "  n=$((n+1))",
        '  echo "DEVICE: $f"',
        "done",
    ]
    if others:
        lines += [
            f"for f in {' '.join(others)}; do",
            '  [ -e "$f" ] && echo "DEVICE: $f"',
            "done",
        ]
    lines.append('echo "RESULT: ACCELERATOR_COUNT=$n"')
    if identity and vendor.identity_command:
        condition = "true" if always_identify else '[ "$n" -gt 0 ]'
        # Only the tool's standard output counts as ids: in a pipeline (`amd-smi list | sed ...`) a missing tool
        # leaves the pipeline's status 0, and its "not found" on stderr must not pass for a device id.
        lines += [
            f"if {condition}; then",
            '  err="${TMPDIR:-/tmp}/accel-dra-identity.$$"',
            f'  if ids=$( {{ {vendor.identity_command} ; }} 2>"$err" ) && [ -n "$ids" ]; then',
            '    printf \'%s\\n\' "$ids" | while IFS= read -r id; do [ -n "$id" ] && echo "IDENTITY: $id"; done',
            "  else",
            '    why=$(head -n 1 "$err" 2>/dev/null)',
            '    [ -n "$why" ] || why=$(printf \'%s\' "$ids" | head -n 1)',
            '    echo "RESULT: IDENTITY_ERROR=${why:-no output}"',
            "  fi",
            '  rm -f "$err"',
            "fi",
        ]
    return "\n".join(lines)


def version_script(vendor: Vendor) -> str:
    """Prints the driver and runtime versions the vendor's tool reports inside the container."""
    lines = []
    for key, command in (
        ("DRIVER_VERSION", vendor.versions.driver_command),
        ("RUNTIME_VERSION", vendor.versions.runtime_command),
    ):
        if not command:
            continue
        lines += [
            f'if out=$( {{ {command} ; }} 2>&1 ) && [ -n "$out" ]; then',
            f'  echo "RESULT: {key}=$(printf \'%s\\n\' "$out" | head -n 1)"',
            "else",
            f'  echo "RESULT: {key}_ERROR=$(printf \'%s\' "$out" | head -n 1)"',
            "fi",
        ]
    return "\n".join(lines)


def health_script(vendor: Vendor) -> str:
    """Runs the vendor's health command: ``RESULT: HEALTH=<first line>`` or ``HEALTH_ERROR=<first line>``."""
    command = vendor.health.command
    if not command:
        return ""
    return "\n".join(
        [
            f"if out=$( {{ {command} ; }} 2>&1 ); then",
            '  echo "RESULT: HEALTH=$(printf \'%s\\n\' "$out" | head -n 1)"',
            "else",
            '  echo "RESULT: HEALTH_ERROR=exit $?: $(printf \'%s\\n\' "$out" | head -n 1)"',
            "fi",
        ]
    )


def script(*parts: str, keep_alive: bool = True, then: str | None = None) -> str:
    """Join script parts, announce ``RESULT: DONE``, then wait for deletion (or run ``then``)."""
    body = [ON_TERM, *(p for p in parts if p), f'echo "{DONE}"']
    body.append(then if then else (KEEP_ALIVE if keep_alive else "exit 0"))
    return "\n".join(body) + "\n"


@dataclass
class Output:
    """What one container printed."""

    text: str
    results: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return DONE in self.text.splitlines()

    @property
    def count(self) -> int | None:
        """Accelerators the container sees (matches of the vendor's first device glob)."""
        raw = self.results.get("ACCELERATOR_COUNT")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def sees_nothing(self) -> bool:
        """No device node of any of the vendor's globs (and the count says so too)."""
        return self.count == 0 and not self.devices

    def describe(self) -> str:
        shown = ", ".join(self.identities or self.devices) or "none"
        return f"{self.count if self.count is not None else '?'} device(s): {shown}"


def parse_output(text: str) -> Output:
    out = Output(text)
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if match := _RESULT_RE.match(line):
            out.results[match[1]] = match[2].strip()
        elif line.startswith("DEVICE: "):
            out.devices.append(line.removeprefix("DEVICE: ").strip())
        elif line.startswith("IDENTITY: "):
            out.identities.append(line.removeprefix("IDENTITY: ").strip())
    return out


# -- objects ------------------------------------------------------------------------------------------


def request(
    vendor: Vendor,
    name: str = "gpu",
    *,
    count: int = 1,
    selectors: Sequence[str] = (),
) -> JSON:
    exactly: JSON = {"deviceClassName": vendor.device_class}
    if count != 1:
        exactly["count"] = count
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": s}} for s in selectors]
    return {"name": name, "exactly": exactly}


def claim_spec(requests: Sequence[JSON], constraints: Sequence[JSON] = ()) -> JSON:
    devices: JSON = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = list(constraints)
    return {"devices": devices}


def claim_template(name: str, spec: JSON) -> JSON:
    return {"kind": "ResourceClaimTemplate", "metadata": {"name": name}, "spec": {"spec": spec}}


def resource_claim(name: str, spec: JSON) -> JSON:
    return {"kind": "ResourceClaim", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class Container:
    name: str
    script: str
    #: Pod claim entries this container references.
    claims: tuple[str, ...] = ()
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: Accelerators requested from the device plugin (``limits`` of the vendor's extended resource).
    extended: int = 0


@dataclass(frozen=True)
class Grant:
    """How a container gets accelerators: claims from templates (DRA) or the extended resource."""

    templates: Mapping[str, str] = field(default_factory=dict)
    claims: tuple[str, ...] = ()
    extended: int = 0

    def container(self, name: str, script: str, image: str | None = None, **more: Any) -> Container:
        return Container(name, script, self.claims, image, extended=self.extended, **more)


def _resources(vendor: Vendor, container: Container) -> JSON:
    resources: JSON = {}
    if container.claims:
        resources["claims"] = [{"name": e} for e in container.claims]
    if container.extended:
        if not vendor.extended_resource:
            raise ValueError(
                f"vendor {vendor.name} names no extendedResource to request from a device plugin"
            )
        resources["limits"] = {vendor.extended_resource: str(container.extended)}
    return {"resources": resources} if resources else {}


def on_node(body: JSON, node: str) -> JSON:
    """The pod, kept to ``node`` by node affinity on the node's name (the scheduler still allocates its
    claims, there only): the devices chosen for it are on that node. No node: the pod as it is."""
    if node:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        affinity = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
        body["spec"]["affinity"] = affinity
    return body


def pod(
    vendor: Vendor,
    name: str,
    containers: Sequence[Container],
    *,
    templates: Mapping[str, str] | None = None,
    claims: Mapping[str, str] | None = None,
    node_name: str | None = None,
) -> JSON:
    """A probe pod. ``templates``/``claims``: pod claim entry -> ResourceClaimTemplate / ResourceClaim name.

    ``node_name`` pins a pod *without* accelerators to a node; a pod with claims or extended resources is
    always left to the scheduler, which is what allocates them.
    """
    entries = [{"name": e, "resourceClaimTemplateName": t} for e, t in (templates or {}).items()]
    entries += [{"name": e, "resourceClaimName": c} for e, c in (claims or {}).items()]
    spec: JSON = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": c.name,
                "image": c.image or vendor.probe_image,
                "command": ["sh", "-c", c.script],
                **({"env": [{"name": k, "value": v} for k, v in c.env.items()]} if c.env else {}),
                # No privileges: whatever the container reaches, it reaches through its claim.
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                **_resources(vendor, c),
            }
            for c in containers
        ],
    }
    if entries:
        spec["resourceClaims"] = entries
    if node_name:
        spec["nodeName"] = node_name
    if vendor.tolerations:
        spec["tolerations"] = [dict(t) for t in vendor.tolerations]
    return {"kind": "Pod", "metadata": {"name": name}, "spec": spec}
