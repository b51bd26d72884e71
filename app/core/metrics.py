"""Prometheus collectors (served on /metrics when PROMETHEUS_ENABLED)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "loupe_http_requests_total", "HTTP requests by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "loupe_http_request_duration_seconds", "HTTP request latency by route template.",
    ["route", "method"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ANALYSIS_LATENCY = Histogram(
    "loupe_analysis_duration_seconds", "Time spent per analysis call (a batch counts once).",
    ["analysis"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IMAGES_ANALYZED = Counter(
    "loupe_images_total", "Images processed, by outcome.", ["outcome"], registry=REGISTRY,
)
BYTES_FETCHED = Counter(
    "loupe_fetched_bytes_total", "Bytes downloaded from image URLs.", registry=REGISTRY,
)
ERRORS = Counter(
    "loupe_errors_total", "Errors by type (request-level and per-image).", ["type"], registry=REGISTRY,
)
MODEL_LOADED = Gauge(
    "loupe_model_ready", "1 when the model is loaded and ready.", ["model"], registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "loupe_model_load_seconds", "How long the last load of the model took.", ["model"], registry=REGISTRY,
)
DECODE_BUDGET_IN_USE = Gauge(
    "loupe_decode_budget_bytes_in_use", "Decode working memory reserved now (of DECODE_MEMORY_MB).",
    registry=REGISTRY,
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "loupe_rate_limit_storage_errors_total",
    "Requests whose rate limits could not be checked in RATE_LIMIT_STORAGE_URI (it failed, or was being left "
    "alone for a second after a failure), by RATE_LIMIT_STORAGE_FAILURE: local = counted in this worker's memory "
    "instead, open = let through uncounted, closed = refused with 503.",
    ["mode"], registry=REGISTRY,
)
RATE_LIMIT_STORAGE_UP = Gauge(
    "loupe_rate_limit_storage_up", "1 when the last call to the rate-limit storage succeeded, 0 when it failed.",
    registry=REGISTRY,
)
