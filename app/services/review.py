"""Vision-LLM review through LiteLLM: prompt, image as a data URI, call, parse, validate, one retry, errors.

Everything here except `complete_structured` (and the reviews that use it) is pure.

* The image the model sees is Loupe's own JPEG re-encode (longest side at most
  LLM_IMAGE_MAX_DIM) sent as a `data:image/jpeg;base64,…` URI: the provider never
  receives a caller's URL, and never has to fetch anything.
* The answer's JSON schema is sent twice: as `response_format={"type": "json_schema"}`
  where the provider supports it (LiteLLM translates it for Anthropic and Gemini),
  and in the system prompt for every model. The schema sent is reduced to the
  subset every provider's structured-output mode accepts (all fields required,
  nullable instead of optional, no additional properties, no numeric or length
  keywords); Loupe validates the full constraints itself with Pydantic.
* An answer that is not JSON, or not valid against the schema, is sent back to the
  model once with what was wrong; a second bad answer is a 502 `llm_invalid_output`.
* Provider errors are mapped to Loupe's envelope: 503 `llm_not_configured`
  (missing key, rejected key), 504 `llm_timeout`, 502 `llm_provider_error`. Messages
  are scrubbed of API keys and tracebacks before they reach a response or a log.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import importlib
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image
from pydantic import BaseModel, ValidationError

from app.core.config import Settings
from app.core.errors import ApiError, ValidationFailed
from app.core.metrics import ERRORS
from app.imaging.decode import DecodedImage
from app.schemas.review import (
    GroupImageVerdict,
    LlmGroupResponse,
    LlmGroupReview,
    LlmImageSent,
    LlmReview,
    LlmReviewResponse,
)

log = logging.getLogger("loupe.llm")

T = TypeVar("T", bound=BaseModel)

JPEG_QUALITY = 90
MAX_ATTEMPTS = 2  # the first answer and one retry on invalid output
REASON_MAX_CHARS = 300

# Where a review connects is fixed by settings, never by a request (a caller could otherwise name
# `ollama/…`, `lemonade/…` or `llamafile/…` and make Loupe POST to a server on its own host):
# * a request may only name a model that LLM_ALLOWED_MODELS allows (default: LLM_DEFAULT_MODEL alone);
# * providers that run on the operator's own servers get LLM_API_BASE, and are refused without it
#   (LiteLLM's own defaults for them are local addresses: 127.0.0.1:11434, :8080, :1234, …);
# * hosted providers talk to their public endpoint (or the base the operator set in that provider's
#   own variable, e.g. AZURE_API_BASE), never to LLM_API_BASE, so it never receives their keys;
# * any other provider is refused: Loupe does not know where it would connect.
API_BASE_PROVIDERS = frozenset({
    "openai", "custom_openai", "openai_like", "hosted_vllm", "lm_studio", "llamafile", "ollama", "ollama_chat",
    "litellm_proxy",
})
HOSTED_PROVIDERS = frozenset({
    "openai", "anthropic", "gemini", "vertex_ai", "vertex_ai_beta", "azure", "azure_ai", "bedrock", "mistral",
    "groq", "cohere", "cohere_chat", "deepseek", "xai", "openrouter", "together_ai", "fireworks_ai", "perplexity",
    "deepinfra", "cerebras", "sambanova", "nvidia_nim", "dashscope", "moonshot",
})
# Providers whose OpenAI-compatible servers take `response_format: json_schema` (vLLM, LM Studio, Ollama ≥ 0.5, …).
SCHEMA_PROVIDERS_WITH_BASE = frozenset({"openai", "custom_openai", "openai_like", "hosted_vllm", "lm_studio",
                                        "ollama", "ollama_chat", "litellm_proxy"})
# Sent as the key to a keyless OpenAI-compatible server (the OpenAI SDK refuses to run without one).
PLACEHOLDER_KEY = "sk-no-key-required"


# --- errors ------------------------------------------------------------------------------------
class LlmError(ApiError):
    status_code = 502
    error_type = "llm_provider_error"


class LlmProviderError(LlmError):
    status_code = 502
    error_type = "llm_provider_error"


class LlmInvalidOutput(LlmError):
    status_code = 502
    error_type = "llm_invalid_output"


class LlmTimeout(LlmError):
    status_code = 504
    error_type = "llm_timeout"


class LlmNotConfigured(LlmError):
    status_code = 503
    error_type = "llm_not_configured"


# --- secrets -------------------------------------------------------------------------------------
_SECRET_ENV = re.compile(r"(API_?KEYS?|_KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)$", re.IGNORECASE)
_SECRET_PATTERNS = [  # (pattern, replacement): key shapes that are redacted even when their value is unknown
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}"), "[redacted]"),          # OpenAI, Anthropic (sk-ant-…), proxies
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), "[redacted]"),                    # Google
    (re.compile(r"\b(?:gsk|xai|hf|ghp|gho|glpat|nvapi)[_-][A-Za-z0-9_\-]{10,}"), "[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"(?i)([?&](?:key|api[_-]?key|access_token|token)=)[^&\s'\"]+"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]{6,}"), r"\1[redacted]"),
]
_TRACEBACK = re.compile(r"\s*Traceback \(most recent call last\).*", re.DOTALL)


def _env_secrets() -> list[str]:
    values: list[str] = []
    for name, value in os.environ.items():
        if value and _SECRET_ENV.search(name):
            values += [v.strip() for v in value.split(",") if len(v.strip()) >= 6]
    return sorted(set(values), key=len, reverse=True)


def scrub(text: str, extra_secrets: list[str] | None = None, limit: int = REASON_MAX_CHARS) -> str:
    """`text` without API keys (known values and usual shapes), tracebacks or litellm's noise; shortened."""
    text = _TRACEBACK.sub("", str(text))
    for secret in (extra_secrets or []) + _env_secrets():
        if secret:
            text = text.replace(secret, "[redacted]")
    for pat, repl in _SECRET_PATTERNS:
        text = pat.sub(repl, text)
    text = re.sub(r"\blitellm\.\w+:\s*", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- image -----------------------------------------------------------------------------------------
@dataclass
class EncodedImage:
    image_id: str | None
    data_uri: str
    width: int
    height: int
    n_bytes: int

    def sent(self) -> LlmImageSent:
        return LlmImageSent(image_id=self.image_id, width_px=self.width, height_px=self.height, bytes=self.n_bytes)


def encode_for_llm(image: DecodedImage, max_dim: int, image_id: str | None = None,
                   quality: int = JPEG_QUALITY) -> EncodedImage:
    """Loupe's own JPEG of the decoded pixels, longest side at most `max_dim`, as a data URI (CPU: run in the pool)."""
    rgb = image.rgb_max(max_dim)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    h, w = rgb.shape[:2]
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return EncodedImage(image_id=image_id, data_uri=uri, width=int(w), height=int(h), n_bytes=len(data))


# --- schema and prompt --------------------------------------------------------------------------------
_WIRE_KEYS = {"type", "properties", "required", "items", "description", "enum", "anyOf"}


def wire_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the subset all structured-output modes accept.

    $refs inlined, every property required, `additionalProperties: false`, nullable as
    `anyOf [.., null]`, and no minimum/maximum/length keywords (those stay in the
    descriptions and are checked by Pydantic afterwards).
    """
    full = model.model_json_schema()
    defs = full.pop("$defs", {})

    def clean(node: Any) -> Any:
        if isinstance(node, list):
            return [clean(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return clean(merged)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in _WIRE_KEYS:
                continue
            if key == "properties":
                out[key] = {name: clean(sub) for name, sub in value.items()}
            elif key in ("items", "anyOf"):
                out[key] = clean(value)
            else:
                out[key] = value
        if out.get("type") == "object" or "properties" in out:
            out["type"] = "object"
            out["required"] = list(out.get("properties", {}))
            out["additionalProperties"] = False
        return out

    return clean(full)


def group_wire_schema(ids: list[str]) -> dict[str, Any]:
    schema = wire_schema(LlmGroupReview)
    schema["properties"]["images"]["items"]["properties"]["image_id"]["enum"] = list(ids)
    schema["properties"]["best_image_id"]["enum"] = list(ids)
    schema["properties"]["images"]["description"] = f"Exactly {len(ids)} entries, one per shot, in the order given."
    return schema


_JSON_RULES = (
    "Reply with ONE JSON object and nothing else: no prose before or after it, no markdown, no code fences. "
    "It must validate against this JSON schema (every field is required; use null only where the schema allows it):\n"
)

SINGLE_SYSTEM = (
    "You are an experienced photo editor reviewing one photograph for a photo-culling tool. Judge what you can "
    "see: focus and sharpness, exposure, composition, the subject, the light and the background. Be specific, "
    "honest and brief; never invent details that are not in the image.\n"
    "overall_score is an integer from 1 (unusable) to 10 (outstanding); 5 is an ordinary, acceptable snapshot. "
    "discard_reason is null unless the photo should be thrown away (badly out of focus, subject cut off, eyes "
    "closed, grossly over- or underexposed, nothing of interest), then one short sentence saying why. "
    "highlights and issues hold at most 5 short items each and may be empty.\n"
)

GROUP_SYSTEM = (
    "You are an experienced photo editor. You get several shots of the same scene, each introduced by its id. "
    "Compare them and pick the single best one to keep: sharpness of the subject, expression and eyes, timing, "
    "composition, exposure. Give every shot an integer score from 1 (unusable) to 10 (outstanding) and a short note "
    "(one sentence). `images` has exactly one entry per shot, in the order given, each with its id exactly as "
    "given; best_image_id is one of those ids. Never invent ids.\n"
)


def _system(text: str, schema: dict[str, Any]) -> str:
    return text + _JSON_RULES + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _custom(custom_prompt: str | None) -> str:
    if not custom_prompt or not custom_prompt.strip():
        return ""
    return ("\n\nAdditional instructions from the user (they do not change the JSON format above):\n"
            + custom_prompt.strip())


def single_messages(img: EncodedImage, custom_prompt: str | None, schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": _system(SINGLE_SYSTEM, schema)},
        {"role": "user", "content": [
            {"type": "text", "text": "Review this photo and answer with the JSON object." + _custom(custom_prompt)},
            {"type": "image_url", "image_url": {"url": img.data_uri}},
        ]},
    ]


def group_messages(imgs: list[EncodedImage], custom_prompt: str | None,
                   schema: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [str(i.image_id) for i in imgs]
    parts: list[dict[str, Any]] = [{"type": "text", "text": (
        f"Here are {len(imgs)} shots of one scene. Their ids, in order: {json.dumps(ids, ensure_ascii=False)}. "
        "Which one is best, and why? Answer with the JSON object." + _custom(custom_prompt))}]
    for img in imgs:
        parts.append({"type": "text", "text": f"Shot id: {json.dumps(str(img.image_id), ensure_ascii=False)}"})
        parts.append({"type": "image_url", "image_url": {"url": img.data_uri}})
    return [{"role": "system", "content": _system(GROUP_SYSTEM, schema)}, {"role": "user", "content": parts}]


# --- parsing ----------------------------------------------------------------------------------------
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


def complaint(reason: str) -> str:
    return (f"Your previous reply could not be used: {reason}. Reply again with only the corrected JSON object "
            "that matches the schema from the system message — no prose, no code fences.")


# --- the call ------------------------------------------------------------------------------------------
_litellm: Any = None
_import_lock = threading.Lock()


def _import_litellm() -> Any:
    global _litellm
    with _import_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import
            module = importlib.import_module("litellm")
            module.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
            _litellm = module
    return _litellm


async def get_litellm() -> Any:
    """LiteLLM, imported once in a worker thread (the import takes seconds and must not block the event loop)."""
    if _litellm is not None:
        return _litellm
    return await asyncio.get_running_loop().run_in_executor(None, _import_litellm)


@dataclass
class Target:
    """Where one review goes: the model string, its provider, and the call's fixed parameters."""

    model: str
    provider: str
    api_base: str | None
    api_key: str | None
    structured: bool  # send response_format json_schema

    def call_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.api_base:
            kw["api_base"] = self.api_base
        if self.api_key:
            kw["api_key"] = self.api_key
        return kw


def provider_env_keys(litellm: Any, model: str, api_base: str | None) -> list[str]:
    try:
        env = litellm.validate_environment(model=model, api_base=api_base)
        return list(env.get("missing_keys") or [])
    except Exception:  # noqa: BLE001 - only used to explain an error
        return []


def resolve_target(litellm: Any, settings: Settings, model: str, *, from_request: bool) -> Target:
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
    except Exception as exc:
        message = (f"LiteLLM does not know the provider of model {model!r}: write it as <provider>/<model>, "
                   "e.g. openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, gemini/gemini-2.5-flash.")
        if from_request:
            raise ValidationFailed(message, detail={"model": model}) from exc
        raise LlmNotConfigured(f"LLM_DEFAULT_MODEL is not usable. {message}", detail={"model": model}) from exc
    api_base = settings.llm_api_base.strip() or None
    if provider not in API_BASE_PROVIDERS:
        api_base = None
    if api_base is None and provider not in HOSTED_PROVIDERS:
        needs = "LLM_API_BASE" if provider in API_BASE_PROVIDERS else "a provider Loupe knows the endpoint of"
        raise LlmNotConfigured(
            f"The model {model} is served by {provider!r}, which needs {needs}: Loupe connects only where its "
            "settings say.", detail={"model": model, "provider": provider})
    api_key = None
    if api_base:
        # A custom server gets LLM_API_KEY, never a hosted provider's key from the environment
        # (OPENAI_API_KEY would otherwise travel to LLM_API_BASE). Local servers (vLLM, Ollama,
        # LM Studio) usually need no key, but the OpenAI SDK insists on one: a placeholder then.
        api_key = settings.llm_api_key.strip() or PLACEHOLDER_KEY
    try:
        structured = bool(litellm.supports_response_schema(model=model))
    except Exception:  # noqa: BLE001
        structured = False
    if api_base and provider in SCHEMA_PROVIDERS_WITH_BASE:
        structured = True
    return Target(model=model, provider=provider, api_base=api_base, api_key=api_key, structured=structured)


_CREDENTIAL_HINT = re.compile(
    r"missing (credentials|[\w ]{0,30}api[ _-]?key)|api_key client option must be set|no api[ _-]?key|"
    r"api[ _-]?key (is )?(not (found|set|provided|valid)|invalid|required)|set (the )?`?\w*API_KEY|"
    r"incorrect api key|invalid (x-)?api[ _-]?key|unauthori[sz]ed", re.IGNORECASE)
_SCHEMA_HINT = re.compile(r"response_format|json_schema|structured output|guided_json|response schema", re.IGNORECASE)


def map_exception(exc: BaseException, litellm: Any, target: Target, timeout_s: float) -> ApiError:
    """A LiteLLM (OpenAI-style) exception → Loupe's error, with a scrubbed reason and never a traceback."""
    extra = [target.api_key] if target.api_key and target.api_key != PLACEHOLDER_KEY else []
    reason = scrub(getattr(exc, "message", None) or str(exc) or type(exc).__name__, extra)
    status = getattr(exc, "status_code", None)
    # What the provider answered stays in the log: echoing upstream bodies would turn Loupe into a way
    # of reading whatever the endpoint returns. The caller gets the status and a short reason of ours.
    log.warning("llm provider error from %s (%s, HTTP %s): %s", target.model, type(exc).__name__, status, reason)
    detail = {"model": target.model, "provider": target.provider, "provider_status": status,
              "exception": type(exc).__name__}
    if isinstance(exc, (TimeoutError, litellm.Timeout)):
        return LlmTimeout(f"The model {target.model} did not answer within LLM_TIMEOUT_S={timeout_s:g} s.",
                          detail={"model": target.model, "provider": target.provider, "timeout_s": timeout_s})
    auth_types = tuple(t for t in (getattr(litellm, "AuthenticationError", None),
                                   getattr(litellm, "PermissionDeniedError", None)) if t)
    if isinstance(exc, auth_types) or _CREDENTIAL_HINT.search(reason):
        missing = provider_env_keys(litellm, target.model, target.api_base)
        hint = f" Set {' or '.join(missing)} in the environment." if missing else ""
        what = "was rejected" if isinstance(exc, auth_types) and status in (401, 403) else "is missing or was rejected"
        return LlmNotConfigured(
            f"The LLM provider for {target.model} is not configured: its API key {what}.{hint}",
            detail={**detail, "missing_env": missing})
    if isinstance(exc, getattr(litellm, "NotFoundError", ())):
        message = f"The provider does not know the model {target.model} (or the endpoint is wrong)."
    elif isinstance(exc, getattr(litellm, "RateLimitError", ())):
        message = f"The LLM provider rate-limited the request for {target.model}; try again later."
    elif isinstance(exc, getattr(litellm, "ContentPolicyViolationError", ())):
        message = f"The LLM provider refused the image or prompt under its content policy ({target.model})."
    elif isinstance(exc, getattr(litellm, "ContextWindowExceededError", ())):
        message = f"The request is larger than the context window of {target.model}; lower LLM_IMAGE_MAX_DIM."
    elif isinstance(exc, getattr(litellm, "APIConnectionError", ())) and status in (None, 500):
        message = f"The LLM provider for {target.model} could not be reached or failed (see the server log)."
    else:
        message = f"The LLM provider returned an error for {target.model}" + (f" (HTTP {status})." if status else ".")
    return LlmProviderError(message, detail=detail)


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


# --- the two reviews ------------------------------------------------------------------------------------
def allowed_models(settings: Settings) -> list[str]:
    """LLM_ALLOWED_MODELS as a list of fnmatch patterns; empty = only LLM_DEFAULT_MODEL."""
    patterns = [p.strip() for p in settings.llm_allowed_models.split(",") if p.strip()]
    return patterns or [settings.llm_default_model.strip()]


def pick_model(settings: Settings, requested: str | None) -> tuple[str, bool]:
    """The model a review uses: the request's, when LLM_ALLOWED_MODELS allows it (else 422), or the default."""
    default = settings.llm_default_model.strip()
    if not requested or not requested.strip() or requested.strip() == default:
        return default, False
    name = requested.strip()
    patterns = allowed_models(settings)
    if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
        raise ValidationFailed(
            f"The model {name!r} is not allowed on this server (LLM_ALLOWED_MODELS); leave `model` out to use "
            f"{default!r}.", detail={"model": name, "allowed_models": patterns})
    return name, True


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


__all__ = ["EncodedImage", "GroupImageVerdict", "LlmInvalidOutput", "LlmNotConfigured", "LlmProviderError",
           "LlmTimeout", "encode_for_llm", "extract_json", "parse_group", "parse_review", "review_group",
           "review_image", "scrub", "wire_schema"]
