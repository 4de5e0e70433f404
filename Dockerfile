# syntax=docker/dockerfile:1
#
# One image for every Gatekeeper role; the command picks the role:
#   docker run IMAGE proxy --workers 4    the edge proxy (ports 8080 and 9180)
#   docker run IMAGE admin                the admin API (port 8081)
#   docker run IMAGE migrate              apply database migrations, then exit
# Configuration comes from GATEKEEPER_* environment variables or a TOML file named by
# GATEKEEPER_CONFIG (see config/gatekeeper.example.toml and docs/operations.md).

# --- build: resolve and install everything into a virtualenv we can copy whole -------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/gatekeeper
ENV PATH=/opt/gatekeeper/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them.
# Only [project] dependencies: no extra, so not the embedded PostgreSQL and Valkey of
# `gatekeeper up` (the [embedded] extra); the image runs against real servers.
COPY pyproject.toml README.md LICENSE ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# A C compiler for the compiled hot path (mypyc, setup.py); only this stage has one. Debian's
# current gcc of the pinned base image: versions pinned here would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY setup.py ./
COPY gatekeeper ./gatekeeper
COPY admin_api ./admin_api
# GATEKEEPER_COMPILE=1: compile the hot path or fail the build (never a silently pure image).
RUN GATEKEEPER_COMPILE=1 pip install --no-cache-dir --no-deps . \
 && pip check \
 && python -c "from gatekeeper.build_info import describe; print(describe())"

# --- runtime: the interpreter, the virtualenv, an unprivileged user, nothing else ----------
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="gatekeeper" \
      org.opencontainers.image.description="Reverse-proxy gatekeeper: device blocking, activity recording and an admin API" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 gatekeeper \
 && useradd --system --uid 10001 --gid gatekeeper --home-dir /var/lib/gatekeeper \
            --create-home --shell /usr/sbin/nologin gatekeeper

COPY --from=build /opt/gatekeeper /opt/gatekeeper

# Listen on all interfaces inside the container; the orchestrator decides what is published.
ENV PATH=/opt/gatekeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEKEEPER_HOST=0.0.0.0 \
    GATEKEEPER_DATA_DIR=/var/lib/gatekeeper

WORKDIR /var/lib/gatekeeper
USER 10001:10001

# 8080 proxied traffic, 8081 admin API, 9180 proxy metrics and health.
EXPOSE 8080 8081 9180

# slim has no curl: ask /healthz with the standard library. The proxy answers on its metrics
# port; the admin role sets HEALTHCHECK_URL=http://127.0.0.1:8081/healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:' + os.environ.get('GATEKEEPER_METRICS_PORT', '9180') + '/healthz', timeout=2)"]

ENTRYPOINT ["gatekeeper"]
CMD ["proxy"]
