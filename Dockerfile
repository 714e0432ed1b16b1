# thelca's processes: `docker compose up` runs the worker, the logger and the replay
# consumer from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY publisher ./publisher
RUN pip install --no-cache-dir ./publisher . \
    && useradd --system --uid 10001 --home-dir /data thelca \
    && mkdir -p /data && chown thelca /data

USER thelca
WORKDIR /data
ENTRYPOINT ["thelca"]
CMD ["--help"]
