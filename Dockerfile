# One image for every Python service in compose.yaml: worker, flower, producer and the offline llm
# server. compose.yaml builds it once (the `llm` service) and tags it bulk-summarize:latest.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="bulk-summarize"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /app

# The pinned dependencies first (requirements.lock, `make lock`), so editing the code (or README.md) does not
# reinstall them; setuptools for the no-isolation install of the package below.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock "setuptools>=68"

# The package: pyproject.toml needs README.md (its `readme`) and the four packages it lists.
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY worker/ worker/
COPY producer/ producer/
COPY localllm/ localllm/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build *.egg-info

# Bundled sample articles for `summarize submit /app/samples/articles.jsonl`; copied after the install
# so editing them does not reinstall anything.
COPY samples/ samples/

USER app

# 5555 Flower, 8765 the offline LLM server, 9808 a worker's Prometheus metrics
EXPOSE 5555 8765 9808
CMD ["summarize", "--help"]
