"""Which model a review uses, where it connects, and what a provider's failure means to the caller.

* The model: the request may name one only if LLM_ALLOWED_MODELS allows it (else 422);
  the endpoint, and the key sent there, come from settings alone (see the comment on
  the provider sets below): a caller must never be able to point Loupe at a server.
* LiteLLM is imported here and nowhere else: once, lazily, in a worker thread (the
  import takes seconds and must not block the event loop), with
  LITELLM_LOCAL_MODEL_COST_MAP set first so that the import never fetches LiteLLM's
  cost map over the network. No other app module needs to set it.
* A LiteLLM (OpenAI-style) exception becomes Loupe's own error, with a reason that is
  scrubbed of keys and tracebacks; what the provider answered stays in the log.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.core.errors import ApiError, ValidationFailed
from app.llm.errors import LlmNotConfigured, LlmProviderError, LlmTimeout, scrub

log = logging.getLogger("loupe.llm")

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
# The environment variable that holds each common hosted provider's key (what LiteLLM reads).
PROVIDER_KEY_VARS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
                     "azure": "AZURE_API_KEY", "mistral": "MISTRAL_API_KEY", "groq": "GROQ_API_KEY"}


def looks_configured(settings: Settings) -> bool:
    """Whether LLM_DEFAULT_MODEL can probably be reached, without importing LiteLLM (for /v1/operations):
    a provider that takes LLM_API_BASE with one set, or a hosted provider whose key is in the environment
    (hosted providers whose key variable Loupe does not know are assumed configured). `resolve_target`
    decides for real at the first review."""
    model = settings.llm_default_model
    provider = model.split("/", 1)[0] if "/" in model else ""
    if provider in API_BASE_PROVIDERS and settings.llm_api_base.strip():
        return True
    if provider in PROVIDER_KEY_VARS:
        return bool(os.environ.get(PROVIDER_KEY_VARS[provider]))
    return provider in HOSTED_PROVIDERS


_litellm: Any = None
_import_lock = threading.Lock()


def _import_litellm() -> Any:
    global _litellm
    with _import_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import
            module: Any = importlib.import_module("litellm")
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
