# Loupe, CPU image. Build: docker build -t loupe .   Run: docker compose up
# (Not built in this project's CI: its machines have no Docker engine.)
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_DIR=/models \
    HF_HOME=/models/hf

# libgomp for torch/onnxruntime, libgl/glib for the opencv builds that deepface pulls in, curl for HEALTHCHECK
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libgl1 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# CPU wheels of torch keep the image small; then one consistent opencv build in cv2/
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.15.0 torchvision==0.29.2 \
 && pip install -r requirements.txt \
 && pip install --force-reinstall --no-deps opencv-contrib-python-headless==4.14.0.94

COPY app ./app
COPY scripts ./scripts

RUN useradd --create-home --uid 10001 loupe && mkdir -p /models && chown -R loupe /models
USER loupe

# The model cache lives in a volume; fill it with:
#   docker compose run --rm loupe python scripts/download_models.py
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health || exit 1

# --no-proxy-headers: Loupe itself decides whether X-Forwarded-For is trusted (FORWARDED_ALLOW_IPS)
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log", "--no-proxy-headers"]
