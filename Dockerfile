# One image for every Python service in compose.yaml: worker, flower, producer and the offline llm server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The installed package: pyproject.toml needs README.md (its `readme`) and the four packages it lists.
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY worker/ worker/
COPY producer/ producer/
COPY localllm/ localllm/
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

# Bundled sample articles for `summarize submit /app/samples/articles.jsonl`; copied after the install
# so editing them does not reinstall the dependencies.
COPY samples/ samples/

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app

EXPOSE 5555 8765
CMD ["summarize", "--help"]
