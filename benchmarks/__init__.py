"""Benchmark scripts (run as `python benchmarks/NAME.py`). Importing the package first makes every script offline:
Hugging Face hub lookups off, tokenizer threads quiet, Prefect analytics off (unless the caller set them)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
