"""What hardware exists: the GPU model, the NVML backend and the fake backend."""
