# Image of the ticket-guard worker. Settings come from the environment; see
# docker-compose.yml for a local setup.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The system zone database, for libraries that do not use the tzdata package.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --create-home --uid 10001 ticketguard

WORKDIR /app
COPY pyproject.toml ./
COPY *.py ./
COPY workflows ./workflows
COPY activities ./activities
# Only the main dependencies: the local stack's CLI and mail sink stay out.
RUN pip install .

# The default DATABASE_URL is a SQLite file under var/ in the working
# directory, so the worker's user must own it.
RUN mkdir var && chown ticketguard:ticketguard var
USER ticketguard

# The worker stops gracefully on SIGTERM, Docker's default stop signal.
CMD ["python", "-m", "worker"]
