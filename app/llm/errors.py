"""Loupe's LLM errors, and the scrubbing that makes a provider's message safe to put in one.

A failed review reaches the caller in Loupe's envelope: 503 `llm_not_configured`
(missing or rejected key), 504 `llm_timeout`, 502 `llm_provider_error`, and 502
`llm_invalid_output` after two unusable answers. The text that goes with them, and
whatever a provider or model said that reaches a log, passes through `scrub` first:
API keys (known by value from the environment, or by their usual shapes) and
tracebacks never leave the process. Both live here because every other module of
`app.llm` raises these errors or scrubs text on its way into one.
"""

from __future__ import annotations

import os
import re

from app.core.errors import ApiError

REASON_MAX_CHARS = 300


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
