# syntax=docker/dockerfile:1
# metacollector image: a virtual environment built in one stage, copied into a slim runtime.
#   docker build -t metacollector .
#   docker run --rm metacollector version
# Upstream's invocation works too (the falcosecurity chart runs `command: [/meta-collector]`,
# `args: [run]`, zap flags included):
#   docker run --rm metacollector /meta-collector run --zap-log-level=info

# --- build: metacollector and its dependencies, bytecode compiled ---------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv --without-pip /opt/venv
COPY pyproject.toml README.md ./
COPY metacollector ./metacollector
# pip of the build image installs into the venv, so the runtime image carries no pip.
RUN pip --python /opt/venv/bin/python install . \
    && /opt/venv/bin/metacollector version \
    && /opt/venv/bin/meta-collector version \
    && ln -s /opt/venv/bin/meta-collector /opt/meta-collector

# --- runtime: the venv only; nothing runs through a shell; non-root ---------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="metacollector" \
      org.opencontainers.image.description="Kubernetes metadata collector for Falco's k8smeta plugin, with CloudEvents output" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# upstream's path: the falcosecurity/k8s-metacollector chart's `command: [/meta-collector]`
COPY --from=build /opt/meta-collector /meta-collector
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Any uid works (the venv is world-readable, nothing is written): the upstream chart runs as
# 1000:1000, ours as 65532:65532.
USER 65532:65532
# 45000 broker-grpc (gRPC Watch), 8080 metrics, 8081 health-probe (/healthz, /readyz)
EXPOSE 45000 8080 8081
ENTRYPOINT ["metacollector"]
CMD ["run"]
