# One image for every process in the Procfile; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY webhooks ./webhooks
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home webhooks
USER webhooks
