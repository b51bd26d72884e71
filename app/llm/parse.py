"""The model's reply → a validated review, or `InvalidOutput` saying what was wrong.

Models wrap their JSON in code fences or sentences, drop fields and invent ids. The
reasons raised here are written for the model: `app.llm.client` sends one back with
`complaint` and asks again, and a second bad answer becomes a 502
`llm_invalid_output`. Validation uses the full Pydantic models (ranges, lengths),
not the reduced schema sent on the wire. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from app.schemas.review import LlmGroupReview, LlmReview


class InvalidOutput(ValueError):
    """The model's answer cannot be used; the message says why (it is sent back to the model)."""


_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def extract_json(text: str | None) -> dict[str, Any]:
    """The one JSON object in a reply (tolerating code fences or a sentence around it)."""
    if text is None or not str(text).strip():
        raise InvalidOutput("the reply was empty")
    text = str(text).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as first:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise InvalidOutput(f"the reply is not JSON ({first.msg} at position {first.pos})") from first
        try:
            value = json.loads(text[start: end + 1])
        except json.JSONDecodeError as exc:
            raise InvalidOutput(f"the reply is not valid JSON ({exc.msg} at position {exc.pos + start})") from exc
    if not isinstance(value, dict):
        raise InvalidOutput(f"the reply is JSON but a {type(value).__name__}, not an object")
    return value


def describe_validation(exc: ValidationError, limit: int = 8) -> str:
    items = []
    for e in exc.errors()[:limit]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "(root)"
        items.append(f"{where}: {e.get('msg')}")
    more = len(exc.errors()) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def parse_review(text: str | None) -> LlmReview:
    data = extract_json(text)
    try:
        return LlmReview.model_validate(data)
    except ValidationError as exc:
        raise InvalidOutput(f"the JSON does not match the schema: {describe_validation(exc)}") from exc


def parse_group(text: str | None, ids: list[str]) -> LlmGroupReview:
    data = extract_json(text)
    try:
        review = LlmGroupReview.model_validate(data)
    except ValidationError as exc:
        raise InvalidOutput(f"the JSON does not match the schema: {describe_validation(exc)}") from exc
    problems = []
    given = [v.image_id for v in review.images]
    unknown = [i for i in given if i not in ids]
    if unknown:
        problems.append(f"images has ids that were not given: {unknown} (the ids are {ids})")
    missing = [i for i in ids if i not in given]
    if missing:
        problems.append(f"images lacks the shots {missing}")
    dupes = sorted({i for i in given if given.count(i) > 1})
    if dupes:
        problems.append(f"images lists {dupes} more than once")
    if review.best_image_id not in ids:
        problems.append(f"best_image_id {review.best_image_id!r} is not one of the ids {ids}")
    if problems:
        raise InvalidOutput("; ".join(problems))
    by_id = {v.image_id: v for v in review.images}
    review.images = [by_id[i] for i in ids]  # the request's order
    return review
