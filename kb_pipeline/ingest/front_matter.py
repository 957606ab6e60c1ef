"""Markdown front matter: the YAML block authors use to label a document.

Labels (title, category, tags, summary, acl) drive tagging and access control, so a wrong type is
an error the author must fix, not something to guess around.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kb_pipeline.ingest.identifiers import MAX_IDENTIFIER_CHARS, normalise_identifiers

LABEL_FIELDS = ("title", "category", "tags", "summary", "acl")

_OPENING = re.compile(r"\A\ufeff?---[ \t]*\r?\n")
_CLOSING = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
# Aliases let a few lines of YAML describe an exponentially large value; copying it must stop early.
_MAX_NODES = 10_000
# libyaml parses ~10x faster than the pure-Python loader. Front matter nested deeper than this, or that
# libyaml rejects, is loaded again by the pure-Python loader so its results, limits and messages decide.
_C_LOADER = getattr(yaml, "CSafeLoader", None)
_C_MAX_DEPTH = 32


class FrontMatterError(ValueError):
    """Front matter that is not valid YAML, not a mapping, or has a label of the wrong type."""


@dataclass(frozen=True)
class Labels:
    title: str | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    summary: str | None = None
    acl: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


def split_front_matter(text: str) -> tuple[dict, str]:
    """Split a leading '---' ... '---' YAML block from the body.

    Dates and other non-JSON values become strings so the mapping can be stored as JSON.
    """
    opening = _OPENING.match(text)
    if opening is None:
        return {}, text
    closing = _CLOSING.search(text, opening.end())
    if closing is None:
        raise FrontMatterError("front matter opened with '---' on line 1 is never closed by a '---' line")
    source = text[opening.end() : closing.start()]
    body = text[closing.end() :]
    body = body[2:] if body.startswith("\r\n") else body[1:] if body.startswith("\n") else body
    try:
        loaded = _load_yaml(source)
    except yaml.YAMLError as exc:
        raise FrontMatterError(_describe_yaml_error(exc)) from None
    except RecursionError:
        raise FrontMatterError("front matter is nested too deeply") from None
    if loaded is None:
        return {}, body
    if not isinstance(loaded, dict):
        raise FrontMatterError(f"front matter must be a mapping of keys to values, got {_type_name(loaded)}")
    return _json_safe(loaded, [_MAX_NODES]), body


def _load_yaml(source: str) -> Any:
    """yaml.safe_load, through libyaml whenever that provably gives the same outcome.

    Both loaders share the constructor and resolver; they differ in error wording (libyaml's "could not
    find expected ':'" against "mapping values are not allowed here") and in how deep they nest
    (the pure-Python composer recurses, so very deep input raises RecursionError). Errors and deep
    values therefore go through the pure-Python loader, exactly as before libyaml was used.
    """
    if _C_LOADER is not None:
        try:
            loaded = yaml.load(source, Loader=_C_LOADER)
        except yaml.YAMLError:
            pass
        else:
            if _shallow(loaded, _C_MAX_DEPTH, [_MAX_NODES]):
                return loaded
    return yaml.safe_load(source)


def _shallow(value: Any, depth: int, budget: list[int]) -> bool:
    """True when `value` nests at most `depth` levels and has at most budget[0] nodes (aliases counted each time)."""
    budget[0] -= 1
    if budget[0] < 0 or depth < 0:
        return False
    if isinstance(value, dict):
        return all(_shallow(k, depth - 1, budget) and _shallow(v, depth - 1, budget) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return all(_shallow(item, depth - 1, budget) for item in value)
    return True


def labels_from_metadata(meta: Mapping[str, Any]) -> Labels:
    """Validate and normalise the label fields; every other key is kept in `extra`."""
    if not isinstance(meta, Mapping):
        raise FrontMatterError(f"front matter must be a mapping of keys to values, got {_type_name(meta)}")
    category = _text_field(meta, "category")
    return Labels(
        title=_text_field(meta, "title"),
        category=category.lower() if category else None,
        tags=_identifier_list(meta, "tags"),
        summary=_text_field(meta, "summary"),
        acl=_acl(meta),
        extra={key: value for key, value in meta.items() if key not in LABEL_FIELDS},
    )


def _text_field(meta: Mapping[str, Any], name: str) -> str | None:
    value = meta.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FrontMatterError(f"front matter field {name!r} must be a string, got {_type_name(value)}")
    text = " ".join(str(value).split())
    return text or None


def _acl(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """No `acl` key: everyone may read. An `acl` key must name a group: an empty one is never "public"."""
    if "acl" not in meta:
        return ()
    groups = _identifier_list(meta, "acl")
    if not groups:
        raise FrontMatterError(
            f"front matter field 'acl' names no group (got {repr(meta['acl'])[:40]}): list the groups allowed to read "
            "the document, e.g. acl: [hr], or remove the field to make it readable by everyone"
        )
    return groups


def _identifier_list(meta: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """Tags and ACL entries are identifiers (see identifiers.normalise_identifier), deduplicated in order."""
    value = meta.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = []
        for item in value:
            if item is None:
                continue
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise FrontMatterError(
                    f"front matter field {name!r} must be a list of strings, "
                    f"got a list containing {_type_name(item)}"
                )
            items.append(str(item))
    else:
        raise FrontMatterError(f"front matter field {name!r} must be a list of strings, got {_type_name(value)}")
    cleaned = normalise_identifiers(items)
    too_long = next((item for item in cleaned if len(item) > MAX_IDENTIFIER_CHARS), None)
    if too_long is not None:
        raise FrontMatterError(
            f"front matter field {name!r} has an entry of {len(too_long)} characters "
            f"(at most {MAX_IDENTIFIER_CHARS}): {too_long[:40]!r}..."
        )
    return cleaned


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"front matter is not valid YAML: {problem}"
    # +1 for 0-based lines, +1 for the opening '---' line.
    return f"front matter is not valid YAML at line {mark.line + 2}: {problem}"


def _json_safe(value: Any, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise FrontMatterError(f"front matter is too large (more than {_MAX_NODES} values)")
    if isinstance(value, dict):
        return {str(key): _json_safe(item, budget) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(item, budget) for item in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _type_name(value: Any) -> str:
    return type(value).__name__
