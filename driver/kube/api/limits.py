"""Limits and enumerations of the resource.k8s.io/v1 API (pkg/apis/resource and apimachinery)."""

from __future__ import annotations

# Limits from resource.k8s.io/v1 types.go (1.35).
MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_WITH_TAINTS_OR_COUNTERS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_ID_LENGTH = 32
MAX_DOMAIN_LENGTH = 63
MAX_ATTRIBUTE_VALUE_LENGTH = 64
MAX_ATTRIBUTE_VALUES = 48  # per device, list items counted one by one
MAX_TAINTS_PER_DEVICE = 16
MAX_COUNTER_SETS = 8
MAX_COUNTERS_PER_SET = 32
MAX_CONSUMPTIONS_PER_DEVICE = 2
MAX_COUNTERS_PER_CONSUMPTION = 32
MAX_BINDING_CONDITIONS = 4
MAX_POOL_NAME_LENGTH = 253
MAX_DRIVER_NAME_LENGTH = 63
MAX_REQUESTS = 32
MAX_SUBREQUESTS = 8
MAX_SELECTORS = 32
MAX_CONSTRAINTS = 32
MAX_CONFIGS = 32
MAX_ALLOCATION_CONFIGS = 2 * MAX_CONFIGS  # the class's and the claim's
MAX_CEL_LENGTH = 10 * 1024
MAX_OPAQUE_PARAMETERS_LENGTH = 10 * 1024
MAX_RESERVED_FOR = 256
MAX_ALLOCATION_RESULTS = 32
MAX_REQUEST_POLICY_OPTIONS = 10
MAX_DEVICE_STATUS_CONDITIONS = 8
MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253
# Device status (resource.k8s.io/v1 types.go) and metav1.Condition limits.
MAX_DEVICE_STATUS_DATA_LENGTH = 10 * 1024
MAX_NETWORK_IPS = 16
MAX_INTERFACE_NAME_LENGTH = 256
MAX_HARDWARE_ADDRESS_LENGTH = 128
MAX_CONDITION_REASON_LENGTH = 1024
MAX_CONDITION_MESSAGE_LENGTH = 32 * 1024
# ObjectMeta (apimachinery api/validation/objectmeta.go).
MAX_ANNOTATIONS_SIZE = 256 * 1024

TAINT_EFFECTS = ("NoExecute", "NoSchedule", "None")  # sorted, as the server lists them
ALLOCATION_MODES = ("All", "ExactCount")
TOLERATION_OPERATORS = ("Equal", "Exists")
CONFIG_SOURCES = ("FromClaim", "FromClass")
CONDITION_STATUSES = ("False", "True", "Unknown")  # sorted, as the server lists them
# Kinds that may not own anything, as "group/version, Kind=kind" (schema.GroupVersionKind's String).
BANNED_OWNERS = frozenset({"/v1, Kind=Event"})
