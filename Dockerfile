# One image for the migration step, the workers and beat.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY outreach ./outreach
COPY workers ./workers
COPY templates ./templates
RUN pip install --no-cache-dir . && useradd --create-home outreach
USER outreach
ENV OUTREACH_HOME=/home/outreach/data
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
