# One image for every role: worker, beat, flower and the demo sandbox differ only by command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY producer ./producer
COPY worker ./worker
COPY sandbox ./sandbox
COPY demo ./demo
RUN pip install . && useradd --system --home /app stockout
# Flower's database (compose mounts a volume here): a fresh named volume takes this owner
RUN mkdir -p /var/lib/stockout-sync/flower && chown stockout /var/lib/stockout-sync/flower
USER stockout
ENTRYPOINT ["stockout-sync"]
CMD ["--help"]
