"""What the Kubernetes API server knows about the objects a DRA driver deals with, as plain functions.

One module per kind (``resourceslice``, ``resourceclaim`` for claims and templates, ``deviceclass``,
``devicetaintrule``) on top of what they share: field errors and paths (``fields``), names and qualified
names (``names``), object metadata and conditions (``metadata``), node selectors (``selectors``),
quantities (``quantities``), CEL selectors and opaque configuration (``deviceconfig``) and the API's limits
(``limits``). The input is the camelCase JSON the API server receives; the output is a list of field
errors in apimachinery's form. Nothing here does I/O: ``accel-dra validate`` prints the errors, the sandbox
API server (driver.sim) turns them into ``Status`` answers. The rules are kube-apiserver 1.37's, with the
feature gates it has on by default.
"""
