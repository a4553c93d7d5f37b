FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY messaging ./messaging
COPY worker ./worker
COPY storage ./storage
RUN pip install --no-cache-dir .
# Workers refuse to run as root with Celery's defaults for good reasons.
RUN useradd --create-home agentpost
USER agentpost
CMD ["agentpost", "--help"]
