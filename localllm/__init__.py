"""Offline default LLM: an OpenAI-compatible server that summarizes articles extractively (``summarize llm-serve``).

Modules: ``extractive`` (the sumy LexRank summarizer), ``jsonfill`` (answers for ``response_format``
json_schema), ``chat`` (POST /v1/chat/completions), ``batches`` (the in-memory Files/Batch API store and
runner, shared with the test fault server), ``batch_routes`` (/v1/files, /v1/batches), ``app`` (the
Starlette app: routes, auth, errors, request log), ``server`` (uvicorn, signals). A new endpoint is a
route in its own module, listed in ``app.create_app``.
"""

from localllm.extractive import MODEL_NAME, count_tokens, summarize_text

__all__ = ["MODEL_NAME", "count_tokens", "summarize_text"]
