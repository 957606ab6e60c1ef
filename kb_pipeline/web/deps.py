"""Request-scoped pieces the routes share: the app's state, a database session, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from kb_pipeline.config import Settings
from kb_pipeline.web.auth import Caller, caller_for
from kb_pipeline.web.engine import SearchEngine
from kb_pipeline.web.settings import WebSettings
from kb_pipeline.web.views import FacetCache


@dataclass
class WebState:
    settings: Settings
    web: WebSettings
    engine: SearchEngine
    Session: sessionmaker[Session]
    facets: FacetCache


def state(request: Request) -> WebState:
    return request.app.state.kb


def db(request: Request) -> Iterator[Session]:
    with state(request).Session() as session:
        yield session


class LoginRequired(Exception):
    """Anonymous request while KB_WEB_REQUIRE_LOGIN=1 (API: 401; pages: to the sign-in form)."""


def caller(request: Request, session: Annotated[Session, Depends(db)]) -> Caller:
    return resolve_caller(request, session)


def resolve_caller(request: Request, session: Session) -> Caller:
    st = state(request)
    who = caller_for(request, session, st.web.reviewer_groups)
    if who.anonymous and st.web.require_login:
        raise LoginRequired()
    return who


DB = Annotated[Session, Depends(db)]
Who = Annotated[Caller, Depends(caller)]
