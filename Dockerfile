# zoo-gateway on a GPU host: CUDA runtime + Java 17 (TorchServe's frontend) + the package.
# Not built in CI (no Docker engine there); see docs/deploy.md for how it is meant to be used.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    ZOO_HOME=/var/lib/zoo-gateway
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip openjdk-17-jre-headless git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/zoo-gateway
COPY pyproject.toml README.md ./
COPY zoo zoo
COPY handlers handlers
COPY serving serving
COPY clients clients
COPY proto proto
# CUDA build of torch for the GPU image (the CPU-only `make setup` path pins the local CPU wheel instead).
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124 \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/zoo assets
ENV PATH=/opt/venv/bin:$PATH

# Weights: mount a pulled HF cache (HF_HOME) or run `zoo pull` at start; TorchServe stays on loopback.
EXPOSE 8080 8081
ENTRYPOINT ["zoo"]
CMD ["serve", "--host", "0.0.0.0"]
