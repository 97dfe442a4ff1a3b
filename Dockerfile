# syntax=docker/dockerfile:1
# dermserve, CPU image: FastAPI/uvicorn + onnxruntime, no TensorFlow.
#
#   docker build -t dermserve:latest .
#   docker run --rm -p 127.0.0.1:8000:8000 dermserve:latest
#
# Configuration is only through DERMSERVE_* environment variables (service/settings.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: build the project wheel and install it, with the serving dependencies only, into a
# virtualenv at the same path the runtime stage uses (venv scripts carry absolute paths).
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the package build needs; models/, runs/, data never enter this stage.
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
COPY trainer ./trainer
COPY export ./export
# '.[cpu,postgres]' = serving core + onnxruntime (CPU) + the PostgreSQL driver for a shared job
# queue across replicas. The `train` extra (TensorFlow) is not installed.
RUN pip install --no-cache-dir './[cpu,postgres]' \
    && pip uninstall --yes pip setuptools wheel \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)"

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="dermserve" \
      org.opencontainers.image.description="Batched REST inference for dermoscopic skin-lesion classification (HAM10000, 7 classes), CPU" \
      org.opencontainers.image.licenses="Apache-2.0 (code); bundled model trained on HAM10000, CC BY-NC 4.0"

# Fixed numeric UID/GID so Kubernetes runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 dermserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dermserve

COPY --from=builder /opt/venv /opt/venv
# The bundled model, read-only for the service user (owned by root).
COPY models/default/model.onnx models/default/manifest.json /opt/dermserve/models/default/
# The SQLite job store (asynchronous jobs) needs a writable directory owned by the service user;
# mount a volume here so accepted jobs survive container replacement.
RUN mkdir -p /var/lib/dermserve/jobs && chown 10001:10001 /var/lib/dermserve/jobs

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DERMSERVE_HOST=0.0.0.0 \
    DERMSERVE_PORT=8000 \
    DERMSERVE_MODEL_DIR=/opt/dermserve/models/default \
    DERMSERVE_JOBS_DIR=/var/lib/dermserve/jobs \
    DERMSERVE_PROVIDERS='["CPUExecutionProvider"]'

WORKDIR /opt/dermserve
USER 10001:10001
EXPOSE 8000

# 503 until the model is loaded and warmed, and while draining on SIGTERM.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('DERMSERVE_PORT', '8000'), timeout=2)"]

# Exec form: python (uvicorn, in-process) is PID 1 and gets SIGTERM directly, then drains for
# DERMSERVE_SHUTDOWN_GRACE_S seconds. Give the orchestrator a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
