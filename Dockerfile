# bloodcells: CPU image by default; a CUDA base by build argument, e.g.
#   docker build -t bloodcells .
#   docker build -t bloodcells:cuda --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
# See docs/operations.md (and docker-compose.yml for the app with MySQL 8).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where torch/torchvision wheels come from: the CPU-only builds unless told otherwise (PyPI's
# default Linux wheels pull several GB of CUDA libraries a CPU image never uses).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Offline, as outside the image; HF_HUB_OFFLINE is set by bloodcells on start unless
# BLOODCELLS_ALLOW_DOWNLOADS=1 (`docker run -e BLOODCELLS_ALLOW_DOWNLOADS=1`), so it is not fixed here.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false NO_ALBUMENTATIONS_UPDATE=1 \
    BLOODCELLS_DATA_DIR=/data BLOODCELLS_MODELS_DIR=/app/models BLOODCELLS_VERSIONS_DIR=/data/classifier \
    BLOODCELLS_CACHE_DIR=/app/.cache \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# python:*-slim has Python; a CUDA (Ubuntu) base gets its python3 from apt. curl: the health check.
RUN apt-get update \
    && packages="curl ca-certificates" \
    && if ! command -v python3 >/dev/null; then packages="$packages python3 python3-venv"; fi \
    && apt-get install -y --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/*
# uid 10001: Ubuntu bases already have a user with uid 1000.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin bloodcells \
    && mkdir -p /app /data && chown bloodcells:bloodcells /app /data
WORKDIR /app

COPY requirements.txt pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt
ENV PATH=/opt/venv/bin:$PATH
COPY --chown=bloodcells:bloodcells . .
# Editable, so that the package finds models/ and the app next to it in /app.
RUN pip install --no-deps --no-build-isolation -e .

USER bloodcells
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1
# Migrate the database (BLOODCELLS_DATABASE_URL, else SQLite in /data), then serve on all interfaces.
CMD ["sh", "-c", "bloodcells db upgrade && exec streamlit run app.py --server.address 0.0.0.0 --server.port 8501 --server.headless true"]
