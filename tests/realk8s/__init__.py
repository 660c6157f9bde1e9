"""The real-cluster tier (docs/testing.md).

Its modules run in this order (tests/conftest.py sorts them, after every other test): those that leave
node-2 alone first, so that node-2's plugin is idle for its minute while they run (conftest.py).
"""

MODULE_ORDER = (
    "test_api",
    "test_cluster",
    "test_plugin",
    "test_exporter",
    "test_recovery",
    "test_dra_features",
    "test_alpha",
    "test_examples",
    "test_conformance",
    "test_mig",
    "test_explain",
    "test_idle",
    "test_parity",
    # Late: its ~1,500 writes churn the resource.k8s.io watch caches, and a plugin whose watch expires
    # relists -- a request in node-2's idle minute.
    "test_api_fidelity",
    # After the idle window (its plugin serves a node of its own, but its faults and writes churn the same
    # watch caches); it removes its node at the end.
    "test_chaos",
)
