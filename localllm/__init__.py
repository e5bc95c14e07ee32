"""Offline default LLM: an OpenAI-compatible server that summarizes articles extractively."""

from localllm.extractive import MODEL_NAME, count_tokens, summarize_text

__all__ = ["MODEL_NAME", "count_tokens", "summarize_text"]
