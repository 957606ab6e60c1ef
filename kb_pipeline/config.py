"""Settings read once from the environment; frozen so nothing mutates them mid-run.

Each default is written once, on its `Settings` field; `ENV` only says which variable overrides a field and
how its text is parsed, so an unset or blank variable leaves the field's default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from kb_pipeline.errors import ConfigError

MB = 1024 * 1024
AdapterLayers = int | Literal["auto", "all"]


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    backbone: str = "minilm"
    max_file_bytes: int = 50 * MB
    parse_timeout_s: float = 60.0
    parse_memory_mb: int = 1024
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    batch_size: int = 32
    # Adapt only the top N transformer layers ("auto": the top third, "all": every layer). Below the
    # adapted layers the backbone is shared by every task, so its output is computed once per text.
    adapter_layers: AdapterLayers = "auto"
    # `kb run` / pipeline_flow retrain a task when more than this share of its labelled data changed.
    retrain_share: float = 0.2

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("KB_HOME") or ".kb").expanduser().resolve()
        url = os.environ.get("KB_DATABASE_URL") or f"sqlite:///{home / 'kb.sqlite3'}"
        overrides = {}
        for field_name, (variable, parse) in ENV.items():
            raw = os.environ.get(variable)
            if raw is not None and raw.strip():
                overrides[field_name] = parse(variable, raw)
        return cls(home=home, database_url=url, **overrides)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def adapted_layers(self, num_layers: int) -> int | None:
        """Top layers an adapter covers on a backbone of `num_layers` (None: all of them)."""
        if self.adapter_layers == "all":
            return None
        if self.adapter_layers == "auto":
            return max(1, -(-num_layers // 3))
        return min(int(self.adapter_layers), num_layers)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


def _number(cast: Callable[[str], float], *, allow_zero: bool = False) -> Callable[[str, str], Any]:
    """A parser for a positive number (or zero, when allowed); its errors name the variable."""

    def parse(variable: str, raw: str):
        try:
            value = cast(raw)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a number") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{variable}={raw!r} must be {'zero or more' if allow_zero else 'positive'}")
        return value

    return parse


def _megabytes(variable: str, raw: str) -> int:
    return int(_number(float)(variable, raw) * MB)


def _adapter_layers(variable: str, raw: str) -> AdapterLayers:
    word = raw.strip().lower()
    if word in {"auto", "all"}:
        return word  # type: ignore[return-value]
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{variable}={raw!r} must be a number of top layers, 'auto' or 'all'") from None
    if value <= 0:
        raise ConfigError(f"{variable}={raw!r} must be positive")
    return value


# field -> (environment variable, parser of its non-blank text)
ENV: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "backbone": ("KB_BACKBONE", lambda _variable, raw: raw),
    "max_file_bytes": ("KB_MAX_FILE_MB", _megabytes),
    "parse_timeout_s": ("KB_PARSE_TIMEOUT_S", _number(float)),
    "parse_memory_mb": ("KB_PARSE_MEMORY_MB", _number(int)),
    "chunk_tokens": ("KB_CHUNK_TOKENS", _number(int)),
    "chunk_overlap": ("KB_CHUNK_OVERLAP", _number(int, allow_zero=True)),
    "adapter_layers": ("KB_ADAPTER_LAYERS", _adapter_layers),
    "retrain_share": ("KB_RETRAIN_SHARE", _number(float)),
}
