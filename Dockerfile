# textclf HTTP service (CPU). The image holds the code; the model folder is mounted at /model.
#
#   textclf export --model runs/trec/best --quantize int8 --data examples/data/trec/test.csv --output export/int8
#   docker build -t textclf-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/export/int8:/model:ro" textclf-serve
#
# CUDA variant: see docs/deploy.md (build args BASE_IMAGE, TORCH_INDEX and ORT_PACKAGE).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
# The CPU wheel index keeps the image small; the default index would pull the CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# onnxruntime for CPU; onnxruntime-gpu for the CUDA variant.
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.32.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Idle OpenMP threads sleep instead of spinning, leaving the cores to the event loop (PyTorch models).
    OMP_WAIT_POLICY=PASSIVE

WORKDIR /app

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Only what the package build needs (setup.cfg reads docs/index.md as the long description).
COPY setup.py setup.cfg LICENSE ./
COPY docs/index.md docs/index.md
COPY textclf ./textclf
# DL3013: "." is this source tree (its own dependencies are ranges in setup.cfg); everything else is pinned.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]" "${ORT_PACKAGE}==${ORT_VERSION}" \
    && useradd --create-home --uid 10001 textclf
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]

# Inside a container the service must listen on all interfaces; publish the port to choose who reaches it.
# SIGTERM (docker stop) lets in-flight requests finish (--graceful-timeout, default 30 s) before exiting.
ENTRYPOINT ["textclf", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]
CMD []
