"""accel-dra: a reference accelerator driver for Kubernetes Dynamic Resource Allocation."""

__version__ = "0.1.0"

DEFAULT_DRIVER_NAME = "gpu.accel-dra.dev"
