"""The kubelet-facing gRPC side: registration, DRA v1/v1beta1 services, health stream, sockets."""
