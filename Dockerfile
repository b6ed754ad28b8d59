# hiw-monitor container image: the agent on 0.0.0.0:9188, as a non-root user.
#
#   docker build -t hiw-monitor .
#   docker run --rm -p 127.0.0.1:9188:9188 -e HIW_DB_PASSWORD \
#     -e HIW_MONITOR_DSN='postgresql://hiw_monitor@db.internal:5432/heroes_in_waiting' hiw-monitor
#
# Configuration, as for the agent outside a container (flags > env > file > defaults):
# - env: HIW_MONITOR_DSN, HIW_MONITOR_TARGET_NAME, HIW_MONITOR_CONFIG, HIW_MONITOR_SHARD,
#   HIW_MONITOR_WEB_CONFIG, HIW_MONITOR_LISTEN (set to 0.0.0.0:9188 here: it wins over a
#   config file's listen:, so change the port with -e HIW_MONITOR_LISTEN=0.0.0.0:PORT),
#   and libpq's PGPASSWORD / PGPASSFILE / PGSSLROOTCERT...;
# - a mounted file: -v ./hiw_monitor.yaml:/etc/hiw-monitor/hiw_monitor.yaml:ro
#   -e HIW_MONITOR_CONFIG=/etc/hiw-monitor/hiw_monitor.yaml (passwords through
#   password_file: /run/secrets/... or password_env:, never in the file);
# - flags: the arguments after the image name replace `run` (e.g. `run --dsn ...`,
#   `once --dsn ...`, `review --dsn ...`, `validate-config FILE`).
#
# With podman or buildah, build with --format docker: the OCI image format has no
# HEALTHCHECK (buildah drops it with a warning).
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module (the tests
# build from a local Debian bookworm root). The pip index: pass --build-arg PIP_INDEX_URL
# (and PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, PIP_CERT) for a mirror; they reach the build
# stage only.
ARG BASE_IMAGE=python:3.12-slim

# --- build: the agent's wheel, installed with its dependencies into a venv ---------------
FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title="hiw-monitor (build stage)" \
      org.opencontainers.image.vendor="Heroes in Waiting"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hiw_monitor ./hiw_monitor
# Binary wheels only for the dependencies (psycopg[binary], bcrypt, PyYAML have them for
# CPython 3.11+ on x86_64 and aarch64): no compiler is needed, none is installed. The venv
# is made here at its final path, from the same base image as the runtime stage, and
# copied whole: no wheel, pip or cache reaches a layer of the final image (a
# RUN --mount=from=build install in the final stage fails in buildah 1.28, Debian 12's
# podman, as soon as the build stage comes from its layer cache).
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --only-binary=:all: --no-binary=hiw-monitor \
        --wheel-dir /wheels . \
    && python3 -m venv /opt/hiw-monitor \
    && /opt/hiw-monitor/bin/pip install --no-cache-dir --no-index --find-links=/wheels \
        hiw-monitor \
    && /opt/hiw-monitor/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/hiw-monitor/bin/hiw-monitor --version

# --- runtime: the venv and a user, nothing else --------------------------------------------
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hiw-monitor" \
      org.opencontainers.image.description="PostgreSQL observability agent for the Heroes in Waiting database: Prometheus metrics on :9188/metrics, the DBA review on /health" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="Heroes in Waiting" \
      org.opencontainers.image.documentation="README.md, section Deploying"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hiw-monitor
COPY --from=build /opt/hiw-monitor /opt/hiw-monitor
ENV PATH=/opt/hiw-monitor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HIW_MONITOR_LISTEN=0.0.0.0:9188
WORKDIR /opt/hiw-monitor
# numeric, so that Kubernetes' runAsNonRoot can verify it
USER 10001:10001
EXPOSE 9188
# /healthz: the scheduler is alive (it answers without credentials unless open_healthz is
# false). No curl in slim images: the venv's Python asks, on the port HIW_MONITOR_LISTEN
# names, over plain HTTP: with TLS (a web config file) replace it with --health-cmd (or the
# orchestrator's own probe).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/hiw-monitor/bin/python", "-c", "import os, urllib.request; port = os.environ.get('HIW_MONITOR_LISTEN', ':9188').rpartition(':')[2] or '9188'; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/hiw-monitor/bin/hiw-monitor"]
CMD ["run"]
