"""`kb review`, `kb review accept`, `kb review set`: a person checks the model's least certain labels.

The queue and the label provenance come from kb_pipeline.review, the verdicts go through
kb_pipeline.store.reviews: the web's review page calls the same functions.
"""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from kb_pipeline.cli.common import JsonOpt, UserError, app, clean, command, emit_json, out, ready_settings

review_app = typer.Typer(
    help="Review the model's least certain labels: list the queue, accept predictions or set labels.",
    invoke_without_command=True,
)
app.add_typer(review_app, name="review")

DocArg = typer.Argument(..., help="Document id or path (as `kb show` takes it).")
ByOpt = typer.Option(None, "--by", help="Who is reviewing (recorded with each label); default: your OS user name.")
ReviewUserOpt = typer.Option(
    None, "--user", help="Review as this user: the document must be one they may read. Without it: the operator."
)


@review_app.callback()
@command
def review(
    ctx: typer.Context,
    user: str | None = typer.Option(
        None, "--user", help="Only documents this user may read. Without it: every document (the operator's view)."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many documents to list."),
    include_reviewed: bool = typer.Option(
        False, "--include-reviewed", help="Also list documents whose category a person gave (after the others)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """List documents whose predictions are least certain first ("needs review" first, then close calls)."""
    if ctx.invoked_subcommand is not None:
        return
    from kb_pipeline.review import queue_counts, review_queue
    from kb_pipeline.search.access import reader_for
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        reader = reader_for(session, user)
        groups = None if reader.operator else list(reader.groups)
        items = review_queue(session, groups, limit, include_reviewed=include_reviewed, operator=reader.operator)
        counts = queue_counts(session, groups, operator=reader.operator)
    if json_out:
        emit_json({"counts": counts, "documents": items})
        return
    if not items:
        out.print("Nothing to review: no enriched document without a person's category (or none you may read).")
        return
    table = Table("id", "title", "predicted", "tags", "why")
    for item in items:
        category = item["category"]
        predicted = f"{category['label']} {category['score']:.2f}" if category else "-"
        if item["needs_review"]:
            predicted += " (needs review)"
        tags = ", ".join(f"{t['tag']} {t['score']:.2f}" for t in item["tags"])
        near = ", ".join(f"{t['tag']} {t['score']:.2f}?" for t in item["near_tags"])
        table.add_row(
            str(item["id"]), Text(clean(item["title"])), Text(clean(predicted)),
            Text(clean("; ".join(filter(None, [tags, near])) or "-")), Text(clean(item["reason"])),
        )
    out.print(table)
    out.print(
        f"{counts['queued']} documents to review, {counts['needs_review']} of them need review (abstained). "
        "Record labels with `kb review accept DOC` or `kb review set DOC --category C --tags a,b`.",
        markup=False,
    )


@review_app.command("accept")
@command
def review_accept(doc: str = DocArg, by: str | None = ByOpt, user: str | None = ReviewUserOpt,
                  json_out: bool = JsonOpt) -> None:
    """Confirm the document's predicted category and tags: they become gold labels, with you as reviewer."""
    from kb_pipeline.store import reviews

    _record(doc, user, by, json_out, lambda session, doc_id, name: reviews.confirm_predictions(session, doc_id, name))


@review_app.command("set")
@command
def review_set(
    doc: str = DocArg,
    category: str | None = typer.Option(None, "--category", help="The document's category."),
    tags: str | None = typer.Option(
        None, "--tags", help="The complete tag set, comma-separated (tags shown now and not listed are rejected)."
    ),
    add_tag: list[str] = typer.Option([], "--add-tag", help="Accept one tag (repeatable)."),
    remove_tag: list[str] = typer.Option([], "--remove-tag", help="Reject one tag (repeatable)."),
    by: str | None = ByOpt,
    user: str | None = ReviewUserOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Record a person's labels for a document (gold, kept apart from front matter and predictions)."""
    from kb_pipeline.store import reviews

    if category is None and tags is None and not add_tag and not remove_tag:
        raise UserError("give --category, --tags, --add-tag or --remove-tag")
    tag_set = [t for t in tags.split(",")] if tags is not None else None

    def record(session, doc_id: int, name: str):
        return reviews.set_labels(session, doc_id, name, category=category, tags=tag_set,
                                  add_tags=add_tag, remove_tags=remove_tag)

    _record(doc, user, by, json_out, record)


def _reviewer(by: str | None) -> str:
    if by is not None:
        return by
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no USER/LOGNAME in the environment
        raise UserError("--by: cannot tell who you are; give --by NAME") from None


def _record(doc: str, user: str | None, by: str | None, json_out: bool, write) -> None:
    """Find the document as `user` may see it, record the verdicts in one transaction, print what was recorded."""
    from kb_pipeline.review import document_label_view
    from kb_pipeline.search.access import find_readable, not_found, reader_for
    from kb_pipeline.store.db import session_factory

    name = _reviewer(by)
    s = ready_settings()
    with session_factory(s).begin() as session:
        found = find_readable(session, doc, reader_for(session, user))
        if found is None or found.status != "active":  # missing, deleted, or not readable: one message
            raise UserError(not_found(doc))
        doc_id, title = found.id, found.title
        verdicts = write(session, doc_id, name)
    with session_factory(s)() as session:
        labels = document_label_view(session, doc_id)
    if json_out:
        emit_json({"id": doc_id, "title": title, "reviewer": " ".join(name.split()),
                   "verdicts": [v.as_dict() for v in verdicts], "labels": labels})
        return
    out.print(f"{clean(title)} (#{doc_id}): recorded as {clean(name)}", markup=False)
    for v in verdicts:
        was = f" (model said {clean(v.predicted_label)})" if v.action == "replaced" else ""
        out.print(f"  {v.kind} {clean(v.label)}: {v.action}{was}", markup=False)
    gold = labels["gold"] if labels else {"category": None, "tags": []}
    category = gold["category"]["label"] if gold["category"] else "-"
    out.print(f"gold now: category {clean(category)}; tags {clean(', '.join(t['label'] for t in gold['tags'])) or '-'}",
              markup=False)
