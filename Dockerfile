# syntax=docker/dockerfile:1
# One image, two entry points: `fanout-worker` (the worker pods) and `fanout-operator` (the
# operator pod). Kubernetes sets the command (the chart and the operator do), so the image has
# no ENTRYPOINT wrapper; the default CMD only prints the worker's usage.
#
# Stage 1 builds wheels for the package and every dependency; stage 2 installs them from that
# directory alone (--no-index), so the runtime stage needs no compiler, no network and keeps no
# pip cache. Every dependency is pinned by constraints.txt, the set the tests pass with.
# tests/test_dockerfile.py runs the same `pip wheel` command on the same COPYed files.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY fanout_core ./fanout_core
COPY fanout_cli ./fanout_cli
COPY fanout_ingest ./fanout_ingest
COPY workers ./workers
COPY operator ./operator
RUN pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fanout-consumer" \
      org.opencontainers.image.description="asyncio SQS fan-out workers (fanout-worker) and their kopf operator (fanout-operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it; a passwd entry so
# getpass.getuser() (kopf's peer identity when POD_ID is unset) works.
RUN groupadd --system --gid 10001 fanout \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin fanout
# The wheels are bind-mounted from the build stage, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "fanout-consumer==${VERSION}"
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["fanout-worker", "--help"]
