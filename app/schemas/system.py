from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

HealthStatus = Literal["ok", "degraded", "unavailable"]


class ModelPrecision(BaseModel):
    precision: Literal["fp32", "int8"] = Field(description="What the model runs at (int8 only under QUANTIZE=int8 "
                                                           "and within int8_limit).")
    int8_deviation: float | None = Field(
        None, ge=0, description="Measured distance of its int8 graph from fp32 on held-out photos, in int8_metric's "
                                "unit; 0 = identical, lower is closer. Null: not quantized (QUANTIZE=none).")
    int8_metric: str | None = Field(None, description="What int8_deviation measures (a score's mean absolute "
                                                      "difference as a share of its range, or 1 - min cosine).")
    int8_limit: float | None = Field(None, ge=0, description="The largest deviation at which int8 is used.")


class ModelStatus(BaseModel):
    name: str
    title: str | None = None
    state: Literal["not_loaded", "loading", "ready", "failed"]
    device: str | None = None
    load_time_s: float | None = None
    last_error: str | None = None
    preload: bool = Field(description="Listed in PRELOAD_MODELS (a failure then makes /health answer 503).")
    path: str | None = Field(None, description="Local path the weights load from.")
    files_present: bool = Field(description="Whether that path exists.")
    source: str | None = Field(None, description="Where scripts/download_models.py gets it.")
    score_range: tuple[float | None, float | None] | None = Field(
        None, description="The range of the score it returns (null bound: open on that side); null when its output "
                          "is not one number (embeddings, boxes, emotion distributions).")
    higher_is_better: bool | None = Field(None, description="Which end of score_range is better (null: not a score).")
    depends: list[str] = Field(default_factory=list, description="Models whose outputs are this model's inputs.")
    max_batch: int | None = Field(None, description="Largest batch of one forward pass.")
    thread_safe: bool | None = Field(None, description="False: it runs on its own single-thread executor.")
    precision: ModelPrecision | None = Field(None, description="A loaded ONNX model's precision (QUANTIZE); null "
                                                               "for the others and before loading.")


class RateLimitStorage(BaseModel):
    storage: str = Field(description="RATE_LIMIT_STORAGE_URI's scheme only (memory, redis, rediss, redis+sentinel …).")
    shared: bool = Field(description="Counters shared by every worker and replica (false: memory, per worker).")
    failure_mode: Literal["local", "open", "closed"] = Field(
        description="RATE_LIMIT_STORAGE_FAILURE: what a request gets while the storage is unreachable.")
    reachable: bool | None = Field(description="Whether the last call to the storage succeeded (null: not called yet).")
    last_error: str | None = Field(None, description="The last call's error while unreachable (no secrets).")
    since: float = Field(description="Unix time of the last change of `reachable`.")


class HealthResponse(BaseModel):
    status: HealthStatus = Field(
        description="`ok`: everything ready. `degraded`: some optional model is not available (the gate still works), "
                    "or the shared rate-limit storage did not answer last time. "
                    "`unavailable` (HTTP 503): a preloaded model failed or the service cannot work.")
    version: str
    api_version: str
    uptime_s: float
    device: str
    models: dict[str, ModelStatus]
    problems: list[str] = Field(default_factory=list)
    rate_limit: RateLimitStorage | None = Field(
        None, description="Where rate limits are counted and whether that storage answered last time (an "
                          "unreachable shared storage makes the status `degraded`).")


class VersionResponse(BaseModel):
    name: str = Field("loupe", description="APP_NAME: this deployment's name.")
    version: str = Field(description="Loupe's version.")
    app_version: str = Field(description="APP_VERSION: this deployment's version label (Loupe's version when unset).")
    api_version: str
    python: str
    libraries: dict[str, str]


class Operation(BaseModel):
    name: str
    flag: str | None = Field(None, description="The run flag that turns it on, where there is one.")
    endpoint: str
    description: str
    models: list[str] = Field(description="Registry models it uses (empty: pure computation).")
    ready: bool = Field(description="Every model it needs is ready (or it needs none).")
    available: bool = Field(description="It can run now or after a lazy load (its models' files are present).")
    settings: dict[str, Any] = Field(description="The settings it applies.")


class TaskTypeInfo(BaseModel):
    type: str = Field(description="The task's `type` in /v1/tasks.")
    description: str
    targets: list[str] = Field(description="The `params.target` values it accepts.")
    default_target: str
    params: dict[str, Any] = Field(description="Its params: each one's JSON schema, with its default.")
    model: str | None = Field(default=None, description="The registry model it runs (null: none, or the analysis' own).")
    ready: bool = Field(description="Its model (and the region models its targets need) are ready, or none is needed.")
    available: bool = Field(description="It can run now or after a lazy load.")


class OperationsResponse(BaseModel):
    api_version: str
    operations: list[Operation]
    tasks: list[TaskTypeInfo] = Field(default_factory=list, description="The task types of /v1/tasks.")
