# One image for every role: worker, beat, flower and the demo sandbox differ only by command.
# Reproducible: every Python package is pinned with its hashes in requirements.lock (`make lock`), and
# the base image by its exact version tag. A tag can be re-pushed with OS fixes; to freeze it too, pin
# the digest: `docker buildx imagetools inspect python:3.11.14-slim-bookworm` → FROM python:…@sha256:….
FROM python:3.11.14-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies in a layer of their own, before any source: a code change reuses it, and only a
# new lock file installs them again. --require-hashes: nothing but the locked files is installed.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# Then the project itself, on top of the locked dependencies (no resolver, no build-time downloads).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY producer ./producer
COPY worker ./worker
COPY sandbox ./sandbox
COPY ops ./ops
RUN pip install --no-deps --no-build-isolation . && useradd --system --home /app stockout
# Flower's database and beat's schedule with its state copy (compose mounts volumes here): a fresh
# named volume takes this owner
RUN mkdir -p /var/lib/stockout-sync/flower /var/lib/stockout-sync/beat \
    && chown stockout /var/lib/stockout-sync/flower /var/lib/stockout-sync/beat
USER stockout
ENTRYPOINT ["stockout-sync"]
CMD ["--help"]
