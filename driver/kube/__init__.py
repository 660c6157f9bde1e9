"""The Kubernetes API layer at the bottom of the package: connection loading, the async client and its
typed errors, the one retry policy, the one list/watch helper and discovery -- used by the plugin, the
exporter, the tools and the sandbox alike (docs/architecture.md)."""
