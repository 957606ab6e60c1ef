"""The web service's own settings, read from the environment once when the app is made."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kb_pipeline.errors import ConfigError
from kb_pipeline.ingest.identifiers import normalise_identifiers

DEFAULT_REVIEWER_GROUP = "kb-reviewers"


@dataclass(frozen=True)
class WebSettings:
    require_login: bool = False  # KB_WEB_REQUIRE_LOGIN=1: every page and API call needs a signed-in user
    reviewer_groups: tuple[str, ...] = (DEFAULT_REVIEWER_GROUP,)  # KB_REVIEWER_GROUPS: who may change labels
    poll_s: float = 2.0  # KB_WEB_POLL_S: how often the database is asked for new adapters or index builds
    page_size: int = 10

    @classmethod
    def from_env(cls) -> WebSettings:
        raw = os.environ.get("KB_WEB_REQUIRE_LOGIN", "").strip().lower()
        if raw not in ("", "0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"KB_WEB_REQUIRE_LOGIN={raw!r} must be 1 or 0")
        groups = os.environ.get("KB_REVIEWER_GROUPS", "").strip()
        reviewer_groups = tuple(normalise_identifiers(groups.split(","))) if groups else (DEFAULT_REVIEWER_GROUP,)
        poll_raw = os.environ.get("KB_WEB_POLL_S", "").strip()
        try:
            poll_s = float(poll_raw) if poll_raw else cls.poll_s
        except ValueError:
            raise ConfigError(f"KB_WEB_POLL_S={poll_raw!r} is not a number") from None
        if poll_s <= 0:
            raise ConfigError(f"KB_WEB_POLL_S={poll_raw!r} must be positive")
        return cls(require_login=raw in ("1", "true", "yes"), reviewer_groups=reviewer_groups, poll_s=poll_s)
