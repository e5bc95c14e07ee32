"""Train the zstd dictionary texts and summaries are compressed with (contract/data/news.zdict).

Trained on the first half of samples/articles.jsonl only, so the benchmarks can measure what it gains on
articles it has not seen (bench/memory.py builds its articles from the other half). A dictionary of
generic news English (words, phrases, punctuation habits) saves 10-15% on a 4 KB article and more on a
short summary, where plain zstd has little to work with.

    python scripts/train_zdict.py     # rewrites contract/data/news.zdict
"""

from __future__ import annotations

import json
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "articles.jsonl"
OUT = ROOT / "contract" / "data" / "news.zdict"
SIZE = 8192
#: the articles it learns from; bench/memory.py uses the others
TRAINING = slice(0, 6)


def main() -> None:
    texts = [json.loads(line)["text"].encode("utf-8") for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    samples = [t[i : i + 500] for t in texts[TRAINING] for i in range(0, len(t), 250)]
    data = zstandard.train_dictionary(SIZE, samples, level=3)
    OUT.write_bytes(data.as_bytes())
    print(f"wrote {OUT} ({len(data.as_bytes())} bytes, dict id {data.dict_id()})")


if __name__ == "__main__":
    main()
