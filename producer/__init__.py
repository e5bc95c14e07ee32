"""The producer: a Python API and the `summarize` CLI. Imports nothing of the worker."""

from .api import Batch, Client, submit

__all__ = ["Batch", "Client", "submit"]
