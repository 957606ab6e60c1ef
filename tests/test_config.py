"""Settings: each default lives on its field, each variable overrides exactly one field, bad values name it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from kb_pipeline.config import ENV, MB, Settings
from kb_pipeline.errors import ConfigError


@pytest.fixture
def clean_env(kb_home, monkeypatch):
    for variable, _ in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_unset_or_blank_variables_leave_the_field_defaults(clean_env, kb_home):
    defaults = {f.name: f.default for f in fields(Settings) if f.name not in ("home", "database_url")}
    settings = Settings.from_env()
    assert {name: getattr(settings, name) for name in defaults} == defaults
    assert settings.home == kb_home.resolve() and settings.database_url == f"sqlite:///{kb_home / 'kb.sqlite3'}"
    for variable, _ in ENV.values():
        clean_env.setenv(variable, "  ")
    assert Settings.from_env() == settings


def test_each_variable_sets_its_field(clean_env):
    values = {
        "KB_BACKBONE": "smollm2", "KB_MAX_FILE_MB": "1.5", "KB_PARSE_TIMEOUT_S": "2.5", "KB_PARSE_MEMORY_MB": "512",
        "KB_CHUNK_TOKENS": "64", "KB_CHUNK_OVERLAP": "0", "KB_ADAPTER_LAYERS": " All ", "KB_RETRAIN_SHARE": "0.5",
    }
    assert set(values) == {variable for variable, _ in ENV.values()}
    for variable, value in values.items():
        clean_env.setenv(variable, value)
    s = Settings.from_env()
    assert (s.backbone, s.max_file_bytes, s.parse_timeout_s, s.parse_memory_mb) == ("smollm2", int(1.5 * MB), 2.5, 512)
    assert (s.chunk_tokens, s.chunk_overlap, s.adapter_layers, s.retrain_share) == (64, 0, "all", 0.5)
    clean_env.setenv("KB_ADAPTER_LAYERS", "3")
    assert Settings.from_env().adapter_layers == 3


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KB_MAX_FILE_MB", "lots", "KB_MAX_FILE_MB='lots' is not a number"),
        ("KB_PARSE_MEMORY_MB", "1.5", "KB_PARSE_MEMORY_MB='1.5' is not a number"),
        ("KB_CHUNK_TOKENS", "0", "KB_CHUNK_TOKENS='0' must be positive"),
        ("KB_CHUNK_OVERLAP", "-1", "KB_CHUNK_OVERLAP='-1' must be zero or more"),
        ("KB_RETRAIN_SHARE", "-0.1", "KB_RETRAIN_SHARE='-0.1' must be positive"),
        ("KB_ADAPTER_LAYERS", "top", "KB_ADAPTER_LAYERS='top' must be a number of top layers, 'auto' or 'all'"),
        ("KB_ADAPTER_LAYERS", "0", "KB_ADAPTER_LAYERS='0' must be positive"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(clean_env, variable, value, message):
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == message


def test_adapted_layers(clean_env):
    base = Settings.from_env()
    assert [base.with_(adapter_layers=v).adapted_layers(6) for v in ("auto", "all", 2, 10)] == [2, None, 2, 6]
