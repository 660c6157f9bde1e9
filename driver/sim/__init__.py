"""The sandbox doubles: API server, allocator, kubelet and container runtime. Never imported by production code."""
