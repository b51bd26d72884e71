"""The call: one structured completion with one retry, and the two reviews built on it.

The only I/O in `app.llm`. Each review picks and resolves its model (`provider`),
builds the messages (`prompt`), and calls `complete_structured`, which

* asks for `response_format={"type": "json_schema"}` where the target supports it
  (LiteLLM translates it for Anthropic and Gemini); a server that refuses it is asked
  again with the schema in the prompt only, and that does not count as an attempt;
* parses and validates the reply (`parse`); an invalid one is sent back to the model
  once with what was wrong, and a second one is a 502 `llm_invalid_output`;
* maps every provider exception to Loupe's errors (`provider.map_exception`).

`completion` can be passed in instead of `litellm.acompletion`, for tests and tools.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from app.core.config import Settings
from app.core.metrics import ERRORS
from app.llm.errors import LlmInvalidOutput, scrub
from app.llm.parse import InvalidOutput, parse_group, parse_review
from app.llm.prompt import (
    EncodedImage,
    complaint,
    group_messages,
    group_wire_schema,
    single_messages,
    wire_schema,
)
from app.llm.provider import Target, get_litellm, map_exception, pick_model, resolve_target
from app.schemas.review import LlmGroupResponse, LlmReview, LlmReviewResponse

log = logging.getLogger("loupe.llm")

T = TypeVar("T", bound=BaseModel)

MAX_ATTEMPTS = 2  # the first answer and one retry on invalid output
_SCHEMA_HINT = re.compile(r"response_format|json_schema|structured output|guided_json|response schema", re.IGNORECASE)


@dataclass
class Outcome(Generic[T]):
    value: T
    attempts: int
    tokens: int | None
    provider_model: str | None


def _usage_tokens(resp: Any) -> int | None:
    usage = getattr(resp, "usage", None)
    if usage is None and isinstance(resp, dict):
        usage = resp.get("usage")
    if usage is None:
        return None
    get = (lambda k: usage.get(k)) if isinstance(usage, dict) else (lambda k: getattr(usage, k, None))
    total = get("total_tokens") or ((get("prompt_tokens") or 0) + (get("completion_tokens") or 0))
    return int(total) if total else None


def _content(resp: Any) -> tuple[str | None, str | None]:
    try:
        choice = resp.choices[0]
        return choice.message.content, getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, TypeError):
        return None, None


Completion = Callable[..., Awaitable[Any]]


async def complete_structured(settings: Settings, target: Target, messages: list[dict[str, Any]],
                              schema_name: str, schema: dict[str, Any], parse: Callable[[str | None], T],
                              max_tokens: int, *, completion: Completion | None = None) -> Outcome[T]:
    """Call the model, parse and validate; on an invalid answer ask once more, telling it what was wrong."""
    litellm = await get_litellm()
    completion = completion or litellm.acompletion
    messages = list(messages)
    structured = target.structured
    tokens: int | None = None
    provider_model: str | None = None
    last_reason = ""
    attempt = 0
    while attempt < MAX_ATTEMPTS:
        attempt += 1
        kwargs: dict[str, Any] = dict(
            model=target.model, messages=messages, max_tokens=max_tokens, timeout=settings.llm_timeout_s,
            num_retries=0, drop_params=True, **target.call_kwargs())
        if structured:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
        try:
            async with asyncio.timeout(settings.llm_timeout_s + 2):  # in case a provider ignores `timeout`
                resp = await completion(**kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped below, never re-raised raw
            if (structured and isinstance(exc, getattr(litellm, "BadRequestError", ()))
                    and _SCHEMA_HINT.search(str(exc))):
                log.warning("model %s refused response_format; asking with the schema in the prompt only",
                            target.model)
                structured = False  # the server does not take structured outputs: the prompt carries the schema
                attempt -= 1
                continue
            raise map_exception(exc, litellm, target, settings.llm_timeout_s) from None
        used = _usage_tokens(resp)
        if used is not None:
            tokens = (tokens or 0) + used
        provider_model = getattr(resp, "model", None) or provider_model
        text, finish = _content(resp)
        try:
            value = parse(text)
            return Outcome(value=value, attempts=attempt, tokens=tokens, provider_model=provider_model)
        except InvalidOutput as exc:
            last_reason = str(exc)
            if finish == "length":
                last_reason += f" — the reply was cut off at max_tokens={max_tokens}; keep every text field shorter"
            log.info("invalid output from %s (attempt %d): %s; reply: %s", target.model, attempt, last_reason,
                     scrub(text or "", limit=500))
            messages = messages + [{"role": "assistant", "content": (text or "")[:4000] or "(empty)"},
                                   {"role": "user", "content": complaint(last_reason)}]
    ERRORS.labels("llm_invalid_output").inc()
    raise LlmInvalidOutput(
        f"The model {target.model} did not return a valid answer in {MAX_ATTEMPTS} attempts: {last_reason}.",
        detail={"model": target.model, "attempts": MAX_ATTEMPTS, "reason": last_reason, "tokens_used": tokens})


async def review_image(settings: Settings, img: EncodedImage, *, model: str | None, custom_prompt: str | None,
                       max_tokens: int | None, started: float,
                       completion: Completion | None = None) -> LlmReviewResponse:
    litellm = await get_litellm()
    name, from_request = pick_model(settings, model)
    target = resolve_target(litellm, settings, name, from_request=from_request)
    schema = wire_schema(LlmReview)
    out = await complete_structured(settings, target, single_messages(img, custom_prompt, schema), "photo_review",
                                    schema, parse_review, max_tokens or settings.llm_max_tokens,
                                    completion=completion)
    return LlmReviewResponse(
        **out.value.model_dump(), image_id=img.image_id, image_sent=img.sent(), model_used=target.model,
        provider_model=out.provider_model, tokens_used=out.tokens, attempts=out.attempts,
        processing_ms=round((time.perf_counter() - started) * 1000, 3))


def group_max_tokens(settings: Settings, n: int) -> int:
    return min(8192, max(settings.llm_max_tokens, 300 + 150 * n))


async def review_group(settings: Settings, imgs: list[EncodedImage], *, model: str | None,
                       custom_prompt: str | None, max_tokens: int | None, started: float,
                       completion: Completion | None = None) -> LlmGroupResponse:
    litellm = await get_litellm()
    name, from_request = pick_model(settings, model)
    target = resolve_target(litellm, settings, name, from_request=from_request)
    ids = [str(i.image_id) for i in imgs]
    schema = group_wire_schema(ids)
    out = await complete_structured(settings, target, group_messages(imgs, custom_prompt, schema), "photo_group_review",
                                    schema, lambda text: parse_group(text, ids),
                                    max_tokens or group_max_tokens(settings, len(imgs)), completion=completion)
    return LlmGroupResponse(
        **out.value.model_dump(), images_sent=[i.sent() for i in imgs], model_used=target.model,
        provider_model=out.provider_model, tokens_used=out.tokens, attempts=out.attempts,
        processing_ms=round((time.perf_counter() - started) * 1000, 3))
