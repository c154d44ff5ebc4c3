# syntax=docker/dockerfile:1
# recserve server image, two variants (docs/deploy.md):
#   docker build -t recserve:0.1.0 .                      serves the model repository mounted at /models
#   docker build --target demo -t recserve:0.1.0-demo .   the demo model baked in at /models
# BuildKit (the default builder since Docker 23) builds only the stages a target needs, so the plain image
# never trains the demo model.

# One base for every stage: the venv's interpreter is a link to this image's /usr/local/bin/python3.11.
# The Debian release is pinned (trixie): the grpc++ packages below are named by release. Pin a digest
# (python:3.11-slim-trixie@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# ---- builder: the only stage with a compiler (Annoy builds from source; so does the grpc++ front end) ------
FROM ${PYTHON_IMAGE} AS builder
# Unpinned: Debian's security updates replace exact versions, and none of these reach the final image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++ libgrpc++-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY native/ native/
COPY protos/ protos/
COPY server/ server/
COPY client/ client/
COPY training/ training/
# `make install` + `make proto`, without -e (the venv must not point back into /src) and without test extras.
# The generated code is committed; regenerating it means the image can never ship code that drifted from the
# .proto files, and the second install (no dependencies, seconds) copies the fresh modules into the venv.
RUN python -m pip install . \
    && python protos/generate.py \
    && python -m pip install --no-deps --force-reinstall . \
    && python -c "from recserve.server.frontend import native_available; assert native_available(), 'no grpc++ front end'"

# ---- runtime: the venv on a clean base; no compiler, no sources ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# grpc++'s shared libraries for the native gRPC front end (same Debian release as the builder).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgrpc++1.51t64 \
    && rm -rf /var/lib/apt/lists/*
# Numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 recserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin recserve \
    && mkdir -p /var/lib/recserve/state \
    && chown -R 10001:10001 /var/lib/recserve
COPY --from=builder /opt/venv /opt/venv
# Thread pools sized as `recserve serve` sizes them (server/cli.py): a spinning BLAS/OpenMP worker steals a
# core from gRPC. Bytecode is compiled at install; the root filesystem may be read-only.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_ENABLE_ONEDNN_OPTS=0
# The working directory holds the memory state backend's log and snapshots (state.state_dir, `state` by
# default; docs/live-state.md): mount a volume here to keep them across containers.
WORKDIR /var/lib/recserve
VOLUME /var/lib/recserve
USER 10001:10001
# gRPC (grpc_port); Prometheus metrics (--metrics-port).
EXPOSE 8001 8002
# For `docker run` and Compose; Kubernetes ignores it and uses the gRPC probes in k8s/base. Exit 0 only when
# health is SERVING, i.e. the model is loaded and warmed up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["recserve", "health", "--target", "127.0.0.1:8001", "--timeout", "3"]
ENTRYPOINT ["recserve"]
CMD ["serve", "--model-repository", "/models"]

# ---- demo-model: trains the demo model (about a minute on two cores) --------------------------------------
# Built on the builder (same venv, same Python); the demo stage takes only /models from it.
FROM builder AS demo-model
COPY models/recommender/config.yaml /models/recommender/config.yaml
RUN recserve build-demo --model-repository /models --no-progress

# ---- demo: the runtime image with the demo model, owned by root so the server cannot modify it ------------
FROM runtime AS demo
COPY --from=demo-model /models /models

# ---- server (default target): the runtime image; mount a model repository at /models ----------------------
FROM runtime AS server
