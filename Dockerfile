# syntax=docker/dockerfile:1
# accel-dra: one image for the kubelet plugin and the metrics exporter (`accel-dra plugin|exporter ...`).
#
#   docker build -t accel-dra:0.1.0 .
#
# The builder stage turns the project and its runtime dependencies into wheels; the runtime stage installs
# only those wheels (no compilers, no dev or test tools, no source tree). The image runs as a non-root user;
# the Helm chart runs the plugin container as root, because the kubelet's plugin directories and
# /var/run/cdi belong to root.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY driver/ driver/
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels accel-dra
LABEL org.opencontainers.image.title="accel-dra" \
      org.opencontainers.image.description="Reference accelerator DRA driver: kubelet plugin and metrics exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
ENTRYPOINT ["accel-dra"]
CMD ["--help"]
