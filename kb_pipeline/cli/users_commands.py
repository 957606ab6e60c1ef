"""`kb users` and `kb users add`: users and the groups that unlock restricted documents."""

from __future__ import annotations

import typer

from kb_pipeline.cli.common import JsonOpt, UserError, app, clean, command, emit_json, out, ready_settings

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
