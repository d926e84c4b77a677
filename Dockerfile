# syntax=docker/dockerfile:1
# Image of the ticket-guard worker, which also runs the migrations
# (`python -m migrations upgrade`). Settings come from the environment, as
# settings.py describes. docker-compose.yml shows a complete setup.

# Build wheels of the project and of its main dependencies. The optional
# extras (the local stack's Temporal CLI and mail sink, the test tools) stay
# out of the image.
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Every module and package that pyproject.toml lists. The tests check that
# none is missing here.
COPY pyproject.toml ./
COPY *.py ./
COPY workflows ./workflows
COPY activities ./activities
COPY migrations ./migrations
COPY reports ./reports
RUN pip wheel --wheel-dir /wheels .


FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The system zone database, for libraries that do not use the tzdata package.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/*

# pip compiles every module to bytecode while it installs. The workflow
# sandbox imports the workflow modules again for every workflow run, and the
# worker's user cannot write bytecode to site-packages, so without it each
# run would compile them from source.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels ticket-guard

RUN useradd --system --create-home --uid 10001 ticketguard

# The default DATABASE_URL is a SQLite file under var/ in the working
# directory, so the worker's user must own it.
WORKDIR /app
RUN mkdir var && chown ticketguard:ticketguard var
USER ticketguard

# No HEALTHCHECK here: the worker has no endpoint unless METRICS_PORT is set.
# docker-compose.yml sets it and checks the metrics endpoint instead.

# The worker stops gracefully on SIGTERM, Docker's default stop signal.
CMD ["python", "-m", "worker"]
