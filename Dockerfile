# Nightshift: one image for the consumer (default) and the producer/CLI (`docker run IMAGE nightshift submit ...`).
#
#   docker build -t nightshift .
#   docker run -d --name nightshift-worker --stop-timeout 40 -v nightshift-data:/data \
#       -e NIGHTSHIFT_REDIS_URL=redis://redis.internal:6379/0 nightshift
#   docker run --rm -v nightshift-data:/data -e NIGHTSHIFT_REDIS_URL=... nightshift \
#       nightshift submit checksum_file --arg path=/etc/hostname
#   docker run -d -p 127.0.0.1:8080:8080 -v nightshift-data:/data -e NIGHTSHIFT_REDIS_URL=... \
#       -e NIGHTSHIFT_WEB_TOKEN=... nightshift nightshift web --bind 0.0.0.0     (the operator console)
#
# Configuration comes only from environment variables (see config.py / `nightshift config`); nothing is baked in
# except the ledger's location inside the container. See docs/deploy.md.
#
# Needs BuildKit (Docker 23+ default) or podman/buildah for COPY --chmod; build with `--format docker` under
# podman/buildah to keep the HEALTHCHECK (the OCI image format has no field for it).
# Works on python:3.11-slim and on the Debian bookworm stand-in base (system python3, PEP 668): everything is
# installed into a venv at /opt/venv with `python3`, never into the system interpreter.

# For reproducible production builds pin the base by digest: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build stage: resolve and install pinned dependencies, then the project, into /opt/venv ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from the project's own metadata (pyproject.toml) and held to deploy/constraints.txt
# (which also pins the transitive ones), so this layer is rebuilt only when they change, not on every code edit.
COPY pyproject.toml ./
COPY deploy/constraints.txt deploy/constraints.txt
# The image carries the optional PostgreSQL driver too, so the same image can use a PostgreSQL ledger, and the
# console's extra (`nightshift web`; the consumer never imports it, so it costs the consumer no memory).
RUN python3 -c 'import tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(project["dependencies"] + project["optional-dependencies"]["postgres"] + project["optional-dependencies"]["web"]))' \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --constraint deploy/constraints.txt --requirement /tmp/requirements.txt

# Then the project itself (config.py, tasks.py, app/, helpers/) with no further dependency resolution.
COPY . .
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools
# (pip and setuptools are not needed at run time; dropping them keeps the image smaller and its surface narrower.
#  To add a task's dependency, add it to pyproject.toml and deploy/constraints.txt and rebuild.)

# ---- runtime stage -----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# A fixed, numeric, unprivileged uid/gid (numeric so orchestrators can verify "runAsNonRoot").
RUN groupadd --gid 10001 nightshift \
 && useradd --uid 10001 --gid nightshift --no-log-init --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nightshift \
 && mkdir -p /data/files \
 && chown nightshift:nightshift /data /data/files \
 && chmod 0750 /data

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 run_worker.sh /usr/local/bin/run_worker.sh

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NIGHTSHIFT_DATABASE_URL=sqlite:////data/nightshift.db

# The SQLite ledger (the record of every accepted job) lives here; mount a named volume or host dir owned by
# uid 10001 and share it with producer containers. With a PostgreSQL ledger nothing needs to persist here.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# SIGTERM = graceful: stop taking work, let running jobs finish within NIGHTSHIFT_SHUTDOWN_TIMEOUT (default 30 s),
# leave the rest queued. Give the container longer than that before SIGKILL:
#   docker run --stop-timeout 40 / docker stop -t 40 / compose stop_grace_period: 40s / k8s terminationGracePeriodSeconds: 40
STOPSIGNAL SIGTERM

# `nightshift health --this-host` exits 0 when Redis and the ledger answer and the heartbeat of a consumer on this
# host (the container's hostname: its own consumer, not another replica's) is fresh.
# (Producer containers started with `nightshift ...` run once and exit; the check only matters for consumers.)
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["nightshift", "health", "--this-host"]

# run_worker.sh execs `nightshift worker ARGS` (so the consumer is the main process and gets SIGTERM itself), or execs the
# given command when the first argument is one (e.g. `nightshift submit ...`, `sh`).
ENTRYPOINT ["run_worker.sh"]
CMD []
