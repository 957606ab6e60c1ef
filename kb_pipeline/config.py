"""Settings read once from the environment; frozen so nothing mutates them mid-run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_MAX_FILE_MB = 50


class ConfigError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


def _env_number(name: str, default: float, cast=float):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _adapter_layers(raw: str | None) -> int | str:
    if raw is None or raw.strip().lower() in {"", "auto"}:
        return "auto"
    if raw.strip().lower() == "all":
        return "all"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"KB_ADAPTER_LAYERS={raw!r} must be a number of top layers, 'auto' or 'all'") from None
    if value <= 0:
        raise ConfigError(f"KB_ADAPTER_LAYERS={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    backbone: str = "minilm"
    max_file_bytes: int = DEFAULT_MAX_FILE_MB * 1024 * 1024
    parse_timeout_s: float = 60.0
    parse_memory_mb: int = 1024
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    batch_size: int = 32
    # Adapt only the top N transformer layers ("auto": the top third, "all": every layer). Below the
    # adapted layers the backbone is shared by every task, so its output is computed once per text.
    adapter_layers: int | str = "auto"
    # `kb run` / pipeline_flow retrain a task when more than this share of its labelled data changed.
    retrain_share: float = 0.2
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("KB_HOME") or ".kb").expanduser().resolve()
        url = os.environ.get("KB_DATABASE_URL") or f"sqlite:///{home / 'kb.sqlite3'}"
        return cls(
            home=home,
            database_url=url,
            backbone=os.environ.get("KB_BACKBONE") or "minilm",
            max_file_bytes=int(_env_number("KB_MAX_FILE_MB", DEFAULT_MAX_FILE_MB) * 1024 * 1024),
            parse_timeout_s=_env_number("KB_PARSE_TIMEOUT_S", 60.0),
            parse_memory_mb=_env_number("KB_PARSE_MEMORY_MB", 1024, int),
            chunk_tokens=_env_number("KB_CHUNK_TOKENS", 200, int),
            chunk_overlap=int(os.environ.get("KB_CHUNK_OVERLAP") or 40),
            adapter_layers=_adapter_layers(os.environ.get("KB_ADAPTER_LAYERS")),
            retrain_share=_env_number("KB_RETRAIN_SHARE", 0.2),
        )

    def with_(self, **changes) -> "Settings":
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
