"""Device health: hardware events -> per-device health state -> ResourceSlice taints and the kubelet stream.

What the hardware reports lives below, with the hardware (:mod:`driver.devices`): the event vocabulary and
each backend's event source. This package decides what the events mean. Layers (docs/health.md):

- :mod:`driver.health.xid`: which XIDs make a GPU unusable and which report an application's own fault;
- :mod:`driver.devices.events`: the events a source reports and the :class:`HealthSource` interface;
- :mod:`driver.health.state`: pure transitions (event -> state) and the per-device view (taints, messages);
- :mod:`driver.health.store`: the state file in the plugin directory (the exporter reads it too);
- :mod:`driver.devices.nvml_events` / :mod:`driver.devices.fake_events`: the event sources of the two
  backends (the fake one also holds the injected faults of ``accel-dra sim inject``);
- :mod:`driver.health.monitor`: the asyncio glue that runs a source, applies events and persists.

Nothing here talks to Kubernetes; the plugin side (taints into slices, the gRPC stream, clear requests)
lives in :mod:`driver.plugin.health`.
"""
