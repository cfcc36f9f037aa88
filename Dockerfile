# steer-ui dashboard. CPU by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t steer-ui:cuda .
# and run with --gpus all. The bundled model is baked in, so the image starts without network.
FROM python:3.11-slim
# The CPU wheel of torch is ~200 MB; the CUDA one brings its CUDA libraries as wheels (~2.7 GB).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TRANSFORMERS_VERBOSITY=error \
    STEER_UI_CACHE=/app/cache STEER_UI_DB=/data/runs.sqlite HF_HOME=/data/huggingface
RUN useradd --create-home --uid 1000 app && mkdir -p /data /app/cache && chown app /data /app/cache
WORKDIR /app
# The same install as scripts/setup.sh: torch at requirements.txt's pin (from TORCH_INDEX), then every
# other package exactly as requirements.lock has it (hashes checked, nothing resolved), then steer-ui.
COPY requirements.txt requirements.lock ./
RUN pip install --extra-index-url "$TORCH_INDEX" "$(grep -E '^torch==' requirements.txt)" \
 && pip install --no-deps --require-hashes -r requirements.lock
COPY --chown=app steer_ui ./steer_ui
COPY --chown=app assets ./assets
COPY --chown=app app.py README.md pyproject.toml ./
RUN pip install --no-deps --no-build-isolation . && rm -rf build
USER app
# Convert the bundled GGUF once at build time (into the image, not the volume): the first start is fast.
RUN python -c "from steer_ui.model.loading import load_model; load_model('smollm2-135m', device='cpu')"
# The session log and downloaded hub models live on the volume.
VOLUME /data
# The dashboard listens on every interface inside the container only (the app's own default is 127.0.0.1).
ENV GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 GRADIO_ANALYTICS_ENABLED=False
EXPOSE 7860
# Slim images have no curl: ask the app itself with Python's urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py"]
