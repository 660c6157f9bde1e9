"""Kubernetes' DRA CEL environment (``k8s.io/dynamic-resource-allocation/cel``): the ``device`` variable, the
Kubernetes library (quantity, semver, ...), type checking, cost estimation and evaluation.

Below both of its users, as upstream: the API layer (:mod:`driver.kube.api`) compiles the selectors of new
claims and classes with it, the allocator (:mod:`driver.allocation`) evaluates them against devices. It
imports neither.
"""
