# bloodcells: CPU image by default; a CUDA base by build argument, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 \
    YOLO_CONFIG_DIR=/app/.cache/ultralytics MPLCONFIGDIR=/app/.cache/matplotlib \
    BLOODCELLS_DATA_DIR=/data STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 bloodcells && mkdir -p /app /data && chown bloodcells /app /data
WORKDIR /app

COPY --chown=bloodcells requirements.txt pyproject.toml ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt
ENV PATH=/opt/venv/bin:$PATH
COPY --chown=bloodcells . .
RUN pip install --no-deps --no-build-isolation -e .

USER bloodcells
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1
CMD ["sh", "-c", "bloodcells db upgrade && exec streamlit run app.py --server.address 0.0.0.0 --server.port 8501"]
