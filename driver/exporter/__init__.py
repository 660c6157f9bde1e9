"""The standardized accelerator-metrics exporter."""
