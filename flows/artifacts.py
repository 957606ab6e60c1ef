"""Markdown for the flows' Prefect artifacts (pure functions, so they are easy to test and read)."""

from __future__ import annotations

MAX_ERROR_ROWS = 50


def _table(header: list[str], rows: list[list]) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"  # noqa: E731
    return "\n".join([cells(header), cells(["---"] * len(header)), *(cells(r) for r in rows)])


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def ingest_markdown(report: dict, errors: list[tuple[str, str, str]]) -> str:
    keys = ("added", "updated", "unchanged", "deleted", "skipped", "errors")
    text = "## Ingest\n\n" + _table(list(keys) + ["seconds"], [[report[k] for k in keys] + [report["seconds"]]])
    if errors:
        rows = [[path, kind, message] for path, kind, message in errors[:MAX_ERROR_ROWS]]
        text += "\n\n### Files that could not be read\n\n" + _table(["file", "kind", "reason"], rows)
        if len(errors) > MAX_ERROR_ROWS:
            text += f"\n\n... and {len(errors) - MAX_ERROR_ROWS} more (`kb errors`)."
    return text


def training_markdown(needs: list[dict], outcomes: dict[str, dict]) -> str:
    rows = []
    for need in needs:
        outcome = outcomes.get(need["task"])
        if outcome is None:
            rows.append([need["task"], "skipped", "", "", "", "", "", need["reason"]])
        elif not outcome["trained"]:
            rows.append([need["task"], "not trained", "", "", "", "", "", outcome["message"]])
        else:
            metric = outcome["primary_metric"]
            before = (outcome.get("active_before") or {}).get(metric)
            rows.append([
                need["task"], outcome["status"], outcome["version"], metric, _num(outcome["metrics"].get(metric)),
                _num(outcome["baseline"].get(metric)), _num(before), outcome["message"],
            ])
    header = ["task", "decision", "version", "metric", "value", "baseline", "active before", "why"]
    return "## Adapters\n\n" + _table(header, rows)


def index_markdown(enrichment: dict, index: dict, overview: dict) -> str:
    rows = [
        ["documents", overview["documents"]],
        ["chunks", overview["chunks"]],
        ["auto-tagged documents", overview["auto_tagged_documents"]],
        ["summarised documents", overview["summarised_documents"]],
        ["index vectors", index.get("count")],
        ["index action", index.get("action")],
        ["embedder", enrichment.get("embed_key")],
        ["tagged / summarised / embedded this run",
         f"{enrichment['tagged']} / {enrichment['summarised']} / {enrichment['embedded']}"],
    ]
    return "## Enrichment and index\n\n" + _table(["", "value"], rows)
