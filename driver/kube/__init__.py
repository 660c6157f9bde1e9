"""Kubernetes API access shared by the plugin, exporter and conformance suite."""
