# One image for every taskcast role: the compose file picks the command
# (`celery -A taskcast.demo.worker worker`, `taskcast serve`), the same commands the tests run.
# It copies only what the package is built from; tests/test_deployment.py installs from
# exactly these COPY sources, so a missing one fails the tests, not a user's build.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY bridge ./bridge
COPY tasks ./tasks
COPY worker_config ./worker_config
RUN pip install . && rm -rf /app/* && useradd --create-home taskcast
USER taskcast
EXPOSE 8765
CMD ["taskcast", "serve", "--host", "0.0.0.0", "--port", "8765", "--processes", "auto"]
