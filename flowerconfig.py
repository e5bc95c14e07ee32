"""Flower's options, read by `celery -A worker flower` from the directory it starts in (its --conf default),
and passed explicitly by `make up`/`make demo` and the tests (scripts/stack.py): the task list shows each
message's [batch id, job ids], its result (counts by outcome and the failed jobs with their error type)
and the exception of a message whose every job failed, as compose's Flower does (compose.yaml sets
FLOWER_TASKS_COLUMNS to the same list)."""

from __future__ import annotations

import os

TASKS_COLUMNS = "name,uuid,state,args,result,exception,received,runtime,worker"

# Flower reads this file after its FLOWER_* variables, so a value set there must win here too.
tasks_columns = os.environ.get("FLOWER_TASKS_COLUMNS") or TASKS_COLUMNS
