"""DRA allocation the way kube-scheduler does it for node-local devices: CEL selectors, the allocator and
``accel-dra explain``."""
