"""``accel-dra explain CLAIM.yaml``: the command line around :mod:`driver.allocation.explain`.

Inputs come from files (``kubectl get ... -o yaml`` or ``-o json`` output works as is) or from the API
server. One node gets per-device detail; several get a summary (``-v`` for detail, ``-o json`` for
everything). Large dumps: JSON is read with the standard library's C decoder, YAML with libyaml when PyYAML
has it, with garbage collection off while the input is built (it only slows building). Exit status: 0
allocatable (on at least one node tried), 1 not allocatable, 2 unusable input.

:func:`add_explain_arguments` only declares flags, so building the CLI parser stays cheap; everything
heavy is imported when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_ALLOCATABLE, EXIT_NOT_ALLOCATABLE, EXIT_INPUT_ERROR = 0, 1, 2


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "claim",
        metavar="CLAIM.yaml",
        help="a ResourceClaim, a ResourceClaimTemplate (its spec.spec is used), or a multi-document YAML "
        "of claims; DeviceClass and ResourceSlice documents in it are used too, and a Pod's extended "
        "resources (resources.limits) become the claim the scheduler would make for them",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--slices",
        metavar="FILE",
        help="ResourceSlices (and DeviceTaintRules) from a file: `kubectl get resourceslices,devicetaintrules "
        "-o json` (JSON loads fastest: thousands of nodes in a second)",
    )
    source.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="read ResourceSlices, DeviceClasses, DeviceTaintRules, other claims' allocations and nodes from "
        "the API server",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        metavar="FILE",
        action="append",
        default=[],
        help="DeviceClass(es) from a file; repeatable; overrides classes of the same name from the server",
    )
    parser.add_argument(
        "--claims",
        metavar="FILE",
        help="other ResourceClaims (`kubectl get resourceclaims -A -o yaml`); their allocations mark devices "
        "as in use",
    )
    parser.add_argument(
        "--node",
        metavar="NODE",
        help="the node to try, with per-device detail (default: every node; a summary when there are several)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="per-device detail for every node tried, not a summary"
    )
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format (json: everything)"
    )
    parser.add_argument(
        "--feature-gates",
        metavar="GATE=BOOL,...",
        default="",
        help="alpha scheduler features the cluster turns on, as kube-scheduler's flag: DRAListTypeAttributes "
        "(constraints compare list-type attribute values as sets)",
    )


@dataclass
class _Inputs:
    claims: list[dict[str, Any]] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    taint_rules: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)  # claims whose allocations hold devices
    pods: list[dict[str, Any]] = field(default_factory=list)  # their extended resources become claims
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node objects by name, when known


class _UsageError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    """Run ``accel-dra explain``; prints the report and returns the exit status."""
    from driver.allocation.allocated import AllocatedState
    from driver.allocation.allocator import INVALID_SELECTOR, Allocator
    from driver.allocation.explain import explain_node, render_json, render_summary, render_text
    from driver.allocation.model import InputError, Node, object_ref, parse_claim
    from driver.allocation.pools import SliceIndex

    try:
        with (
            _no_garbage_collection()
        ):  # building one large object graph: scanning it again and again is waste
            inputs = _load(args)
            index = SliceIndex(inputs.slices, inputs.taint_rules)
        nodes = _node_names(args.node, index, inputs.nodes)
        refs = [object_ref(c) for c in inputs.claims]
        uids = [
            str((c.get("metadata") or {}).get("uid"))
            for c in inputs.claims
            if (c.get("metadata") or {}).get("uid")
        ]
        allocated = AllocatedState.from_claims(inputs.others, exclude=[*refs, *uids])
        gates = _feature_gates(args.feature_gates)
        allocator = Allocator(
            index, inputs.classes, allocated, list_type_attributes=gates.get("DRAListTypeAttributes", False)
        )
        claims = [parse_claim(c) for c in inputs.claims]
        detail = args.output == "json" or args.verbose or len(nodes) == 1
        reports = [explain_node(allocator, claims, _node(name, inputs.nodes, Node), detail) for name in nodes]
    except (InputError, _UsageError, OSError, ValueError) as exc:
        print(f"accel-dra explain: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    invalid = next((r.failure for r in reports if r.failure and r.failure.cause == INVALID_SELECTOR), None)
    if args.output == "json":
        sys.stdout.write(render_json(reports, refs))
    else:
        sys.stdout.write(render_text(reports) if detail else render_summary(reports, refs))
    if invalid is not None:
        print(f"accel-dra explain: {invalid.message}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return EXIT_ALLOCATABLE if any(r.allocatable for r in reports) else EXIT_NOT_ALLOCATABLE


KNOWN_GATES = ("DRAListTypeAttributes",)


def _feature_gates(text: str) -> dict[str, bool]:
    """``Name=true,Other=false`` as kube-scheduler's ``--feature-gates`` reads it (the gates modelled)."""
    gates: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            raise _UsageError(f"--feature-gates: {item!r} is not NAME=true|false")
        if name not in KNOWN_GATES:
            raise _UsageError(f"--feature-gates: {name} is not modelled; known: {', '.join(KNOWN_GATES)}")
        gates[name] = value.lower() == "true"
    return gates


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """Collection off while the input is loaded; what was loaded is then left out of later collections."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _node(name: str, known: Mapping[str, Mapping[str, Any]], node_type: Any) -> Any:
    return node_type.from_object(known[name]) if name in known else node_type(name)


def _node_names(wanted: str | None, index: Any, known: Mapping[str, Any]) -> list[str]:
    """The nodes to try: ``--node``, else every node a slice names, and every known Node object when some
    slices select nodes by label or take all nodes."""
    if wanted:
        return [wanted]
    names = set(index.node_names())
    if index.not_on_a_node:
        names |= set(known)
    if not names:
        raise _UsageError("no slice names a node (nodeName); say which node to try with --node")
    return sorted(names)


# -- loading ------------------------------------------------------------------------------------------------


def _documents(path: str) -> list[dict[str, Any]]:
    """Every object in a YAML/JSON file; lists are flattened: kubectl's ``List`` and the API's own typed
    lists (``ResourceSliceList``: their items carry no kind)."""
    from driver.kube.lists import objects

    loaded = _parse(path, Path(path).read_text())
    out: list[dict[str, Any]] = []
    for doc in loaded:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise _UsageError(f"{path}: expected Kubernetes objects, found {type(doc).__name__}")
        out += objects(doc)
    return out


def _parse(path: str, text: str) -> list[Any]:
    """JSON (``kubectl get -o json``) is read as JSON, the fastest; YAML with libyaml's C loader when
    PyYAML has it (dumps of thousands of nodes)."""
    import yaml

    if text.lstrip()[:1] == "{":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError:
            pass  # YAML flow style: the YAML parser reads it
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        raise _UsageError(f"{path}: not valid YAML: {exc}") from None


def _sort_documents(path: str, docs: Iterable[dict[str, Any]], inputs: _Inputs, claims_allowed: bool) -> None:
    from driver.allocation.model import claim_from_template

    for doc in docs:
        kind = doc.get("kind")
        if kind == "ResourceClaim" and claims_allowed:
            inputs.claims.append(doc)
        elif kind == "ResourceClaimTemplate" and claims_allowed:
            inputs.claims.append(claim_from_template(doc))
        elif kind == "Pod" and claims_allowed:
            inputs.pods.append(doc)
        elif kind == "ResourceSlice":
            inputs.slices.append(doc)
        elif kind == "DeviceClass":
            inputs.classes[str((doc.get("metadata") or {}).get("name"))] = doc
        elif kind == "DeviceTaintRule":
            inputs.taint_rules.append(doc)
        elif kind == "Node":
            inputs.nodes[str((doc.get("metadata") or {}).get("name"))] = doc
        elif kind == "ResourceClaim":
            inputs.others.append(doc)
        else:
            print(f"accel-dra explain: {path}: ignoring {kind or 'an object without kind'}", file=sys.stderr)


def _load(args: argparse.Namespace) -> _Inputs:
    inputs = _Inputs()
    _sort_documents(args.claim, _documents(args.claim), inputs, claims_allowed=True)
    if not inputs.claims and not inputs.pods:
        raise _UsageError(f"{args.claim}: no ResourceClaim, ResourceClaimTemplate or Pod found")
    if args.kubeconfig:
        import asyncio

        asyncio.run(_load_from_server(args.kubeconfig, args.node, inputs))
    if args.slices:
        _sort_documents(args.slices, _documents(args.slices), inputs, claims_allowed=False)
    for path in args.classes:
        _sort_documents(path, _documents(path), inputs, claims_allowed=False)
    if args.claims:
        _sort_documents(args.claims, _documents(args.claims), inputs, claims_allowed=False)
    inputs.claims += _extended_resource_claims(args.claim, inputs)
    if not inputs.claims:
        raise _UsageError(f"{args.claim}: no ResourceClaim, ResourceClaimTemplate or extended resource found")
    return inputs


def _extended_resource_claims(path: str, inputs: _Inputs) -> list[dict[str, Any]]:
    """For each pod of the input, the claim the scheduler makes for its extended resources backed by a
    DeviceClass (on a node without a device plugin for them), named ``<pod>-extended-resources``."""
    from driver.allocation.extended import NotBackedError, extended_claim

    out = []
    for pod in inputs.pods:
        name = str((pod.get("metadata") or {}).get("name"))
        try:
            found = extended_claim(pod, inputs.classes.values(), allocatable={})
        except NotBackedError as exc:
            raise _UsageError(f"{path}: pod {name}: {exc}") from None
        if found is not None:
            claim = found.claim(pod)
            claim["metadata"]["name"] = f"{name}-extended-resources"
            out.append(claim)
    return out


async def _load_from_server(kubeconfig: str, node: str | None, inputs: _Inputs) -> None:
    import aiohttp

    from driver.kube.client import (
        DEVICE_CLASSES,
        DEVICE_TAINT_RULES,
        NODES,
        RESOURCE_CLAIMS,
        RESOURCE_SLICES,
        ApiError,
        KubeClient,
    )
    from driver.kube.connection import KubeConfigError
    from driver.kube.discovery import list_served

    try:
        async with await KubeClient.connect(kubeconfig) as kube:
            inputs.slices += (await kube.list(RESOURCE_SLICES)).get("items") or []
            for device_class in (await kube.list(DEVICE_CLASSES)).get("items") or []:
                inputs.classes.setdefault(device_class["metadata"]["name"], device_class)
            inputs.others += (await kube.list(RESOURCE_CLAIMS)).get("items") or []
            for item in (await kube.list(NODES)).get("items") or []:
                inputs.nodes[item["metadata"]["name"]] = item
            # resource.k8s.io/v1 since 1.37, v1beta2 in 1.36 (with its gate on); none when not served.
            inputs.taint_rules += await list_served(kube, DEVICE_TAINT_RULES)
    except ApiError as exc:
        raise _UsageError(f"API server: {exc}") from None
    except (KubeConfigError, aiohttp.ClientError, OSError) as exc:
        raise _UsageError(f"cannot use the API server of {kubeconfig}: {exc}") from None
    if node and node not in inputs.nodes:
        print(
            f"accel-dra explain: node {node} is not known to the API server; trying it anyway",
            file=sys.stderr,
        )
