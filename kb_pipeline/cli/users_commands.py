"""`kb users`, `kb users add`, `kb users token` / `revoke`: users, the groups that unlock restricted documents,
and the API tokens the web service checks."""

from __future__ import annotations

import typer

from kb_pipeline.cli.common import JsonOpt, UserError, app, clean, command, emit_json, err, out, ready_settings

users_app = typer.Typer(help="Users and the groups that grant access to restricted documents.", invoke_without_command=True)
app.add_typer(users_app, name="users")


@users_app.callback()
@command
def users(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List users and their groups."""
    if ctx.invoked_subcommand is not None:
        return
    from kb_pipeline.store import users
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        rows = users.list_users(session)
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        out.print(f"{clean(row['name'])}: {clean(', '.join(row['groups'])) or '(no groups)'}", markup=False)


@users_app.command("add")
@command
def users_add(
    name: str = typer.Argument(...),
    groups: str = typer.Option("", "--groups", help="Comma-separated groups, e.g. hr,finance."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a user (or replace their groups)."""
    from kb_pipeline.ingest.identifiers import MAX_IDENTIFIER_CHARS, normalise_identifiers
    from kb_pipeline.store import users
    from kb_pipeline.store.db import session_factory

    if not name.strip() or len(name) > MAX_IDENTIFIER_CHARS:
        raise UserError(f"user name must be 1 to {MAX_IDENTIFIER_CHARS} characters: {name[:40]!r}")
    too_long = [g for g in normalise_identifiers(groups.split(",")) if len(g) > MAX_IDENTIFIER_CHARS]
    if too_long:
        raise UserError(f"--groups: {too_long[0][:40]!r}... is longer than {MAX_IDENTIFIER_CHARS} characters")
    s = ready_settings()
    with session_factory(s).begin() as session:
        groups_now = users.add_user(session, name, groups.split(","))
    if json_out:
        emit_json({"name": name, "groups": groups_now})
    else:
        out.print(f"{clean(name)}: {clean(', '.join(groups_now)) or '(no groups)'}", markup=False)


def _for_user(action, name: str):
    """`action(session, name)` in one transaction; an unknown user is a one-line error, not a traceback."""
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.tokens import UnknownUser

    try:
        with session_factory(ready_settings()).begin() as session:
            return action(session, name)
    except UnknownUser as exc:
        raise UserError(str(exc)) from None


@users_app.command("token")
@command
def users_token(name: str = typer.Argument(...), json_out: bool = JsonOpt) -> None:
    """Issue an API token for a user (for `Authorization: Bearer` and the web sign-in); it is shown only now."""
    from kb_pipeline.store.tokens import issue_token

    token = _for_user(issue_token, name)
    if json_out:
        emit_json({"name": name, "token": token})
    else:
        out.print(token, markup=False)
        err.print("Shown once: only its hash is kept. `kb users revoke NAME` ends it.", highlight=False)


@users_app.command("revoke")
@command
def users_revoke(name: str = typer.Argument(...), json_out: bool = JsonOpt) -> None:
    """Revoke every API token of a user (their web sessions end too)."""
    from kb_pipeline.store.tokens import revoke_tokens

    revoked = _for_user(revoke_tokens, name)
    if json_out:
        emit_json({"name": name, "revoked": revoked})
    else:
        out.print(f"{clean(name)}: {revoked} token{'s' if revoked != 1 else ''} revoked", markup=False)
