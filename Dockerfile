# The gateway image: `llmaas serve` from a venv on python:3.11-slim, as a non-root user.
#   docker build -t llmaas:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/config.yaml:/etc/llmaas/config.yaml:ro" llmaas:0.1.0
# The engines (vLLM) run from their own images; nothing of them is in here.

# Builder: a wheel of the project, installed with its runtime dependencies (no extras) into
# /opt/llmaas, at the versions CI last passed with (constraints.txt, as `make install` uses).
# Every dependency ships binary wheels, so no compiler is needed even here.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the tree out).
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
# The venv has no pip of its own: the builder's pip installs into it (--python).
RUN python -m venv --without-pip /opt/llmaas \
    && pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && pip --python /opt/llmaas/bin/python install -c constraints.txt /tmp/wheels/llmaas-*.whl

# Runtime: the venv alone. Bytecode was compiled at install, so a read-only root filesystem
# works; the only places written at run time are /tmp (with --workers N, the Prometheus
# multiprocess directory) and the usage spill directory under HOME:
#   /home/llmaas/.local/state/llmaas/usage-spill  (metering.spill_dir's default)
# The chart mounts an emptyDir at /tmp and a volume at the spill directory.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="llmaas" \
      org.opencontainers.image.description="OpenAI-compatible gateway in front of vLLM" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/llmaas/bin:$PATH \
    HOME=/home/llmaas \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMAAS_HOST=0.0.0.0
# A numeric user, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 llmaas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/llmaas \
        --shell /usr/sbin/nologin llmaas \
    && mkdir -p /home/llmaas/.local/state/llmaas/usage-spill \
    && chown -R 10001:10001 /home/llmaas
COPY --from=builder /opt/llmaas /opt/llmaas
WORKDIR /home/llmaas
USER 10001
EXPOSE 8080
ENTRYPOINT ["llmaas"]
CMD ["serve", "--config", "/etc/llmaas/config.yaml"]
