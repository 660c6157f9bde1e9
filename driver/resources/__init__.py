"""Hardware -> DRA: the standard attribute profile, slice building and the ResourceSlice publisher."""
