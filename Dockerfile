# syntax=docker/dockerfile:1.7
# The agentrun operator image: `docker build --build-arg SOURCE=<repository URL> -t agentrun-operator:0.1.0 .`
#
# Stage 1 builds wheels (the project's and its dependencies'); stage 2 installs those wheels
# only, so no compiler, build backend or source tree reaches the final image. The chart runs
# it as UID 65532 with a read-only root filesystem and /tmp on an emptyDir.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is reused until they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip wheel --wheel-dir /wheels --requirement /tmp/requirements.txt
# Then the project itself (hatchling needs the README named in pyproject.toml).
COPY README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="agentrun-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs AI agent requests as AgentRun custom resources" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
# Install from the build stage's wheels through a bind mount, so the wheels themselves never
# become a layer; then drop the installers, which the operator does not need at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels agentrun-operator \
    && pip uninstall --yes pip setuptools wheel
# Numeric, so the kubelet can verify runAsNonRoot without a passwd entry.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["agentrun"]
CMD ["operator"]
