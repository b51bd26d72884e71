"""One settings class for the whole service.

Every field is read from the environment (or a `.env` file) under its upper-case
name, with or without the `LOUPE_` prefix (`LOUPE_API_KEY` or `API_KEY`), and every
field is documented in `.env.example`. Nothing here is unused:
`tests/unit/test_config.py` checks that each setting is referenced in the code.

Which wins: arguments to `Settings(...)`, then `LOUPE_NAME` in the environment, then
`NAME` in the environment, then `LOUPE_NAME` and `NAME` in the `.env` file. A generic
name such as `API_KEY` or `DEVICE` may be meant for another program sharing the
environment; with `LOUPE_ENV_PREFIX_ONLY=true` in the environment only prefixed names
are read (that switch is read from the process environment only, before any file).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

VERSION = "0.1.0"
API_VERSION = "v1"
ENV_PREFIX = "LOUPE_"


def prefix_only() -> bool:
    """LOUPE_ENV_PREFIX_ONLY: read only LOUPE_-prefixed names (process environment only)."""
    return os.environ.get("LOUPE_ENV_PREFIX_ONLY", "").strip().lower() in ("1", "true", "yes", "on")


class Settings(BaseSettings):
    # hide_input_in_errors: a start-up error must not print the other settings (API keys among them)
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The order in the module docstring: prefixed names before plain ones, the environment before .env."""
        env_file = getattr(dotenv_settings, "env_file", None)
        encoding = getattr(dotenv_settings, "env_file_encoding", None)
        prefixed_env = EnvSettingsSource(settings_cls, env_prefix=ENV_PREFIX, case_sensitive=False)
        prefixed_dotenv = DotEnvSettingsSource(settings_cls, env_file=env_file, env_file_encoding=encoding,
                                               env_prefix=ENV_PREFIX, case_sensitive=False)
        if prefix_only():
            return init_settings, prefixed_env, prefixed_dotenv, file_secret_settings
        return init_settings, prefixed_env, env_settings, prefixed_dotenv, dotenv_settings, file_secret_settings

    # --- service -----------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True
    api_keys: str = ""  # comma-separated; API_KEY (single) is accepted too
    api_key: str = ""
    rate_limit: str = ""  # slowapi syntax, e.g. "60/minute"; empty disables
    auth_fail_limit: str = "20/minute"  # failed authentications per client IP; empty disables
    forwarded_allow_ips: str = ""  # proxies whose X-Forwarded-For is trusted: IPs/CIDRs, "*" = any; empty = none
    # where RATE_LIMIT and AUTH_FAIL_LIMIT count: memory:// (per worker) or a Redis shared by workers and replicas
    rate_limit_storage_uri: str = "memory://"
    # what a request gets while that storage cannot be reached (local / open / closed: app.core.ratelimit)
    rate_limit_storage_failure: Literal["local", "open", "closed"] = "local"
    rate_limit_storage_timeout_s: float = Field(default=0.5, gt=0, le=30)  # connect and read timeout of each call
    prometheus_enabled: bool = True
    analysis_threads: int = Field(default=0, ge=0, le=64)  # 0 = number of CPUs
    batch_concurrency: int = Field(default=4, ge=1, le=64)

    # --- ingest ------------------------------------------------------------
    max_image_mb: float = Field(default=20.0, gt=0)
    max_raw_mb: float = Field(default=100.0, gt=0)  # camera RAW files (DNG, CR3, NEF …) are 20-80 MB
    max_image_pixels: int = Field(default=60_000_000, gt=0)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=20)
    allow_private_urls: bool = False
    max_batch_size: int = Field(default=32, ge=1, le=1000)
    decode_memory_mb: float = Field(default=1024.0, gt=0)  # process-wide budget of decode working memory
    decode_wait_s: float = Field(default=10.0, ge=0)  # longest wait for that budget before a 503

    # --- blur / exposure gate ---------------------------------------------
    analysis_max_dim: int = Field(default=1024, ge=64, le=8192)
    blur_threshold: float = Field(default=100.0, ge=0)
    bright_min: float = Field(default=50.0, ge=0, le=255)
    bright_max: float = Field(default=205.0, ge=0, le=255)
    shadow_clip_max: float = Field(default=0.30, ge=0, le=1)
    highlight_clip_max: float = Field(default=0.15, ge=0, le=1)
    min_side_px: int = Field(default=128, ge=0)
    quality_min: float = Field(default=0.5, ge=0, le=1)

    # --- models ------------------------------------------------------------
    model_dir: Path = Path("models")
    preload_models: str = ""  # comma-separated registry names, or "all"
    model_ttl_s: float = Field(default=0.0, ge=0)  # 0 = never unload
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_model_downloads: bool = False
    torch_bf16: bool = False
    inference_runtime: Literal["onnxruntime", "openvino", "torch"] = "onnxruntime"  # for the models that export
    # int8 graphs for NIMA, CLIP's image tower and DINOv2, each used only within its deviation limit (quantize.py)
    quantize: Literal["none", "int8"] = "none"
    quantize_calibration_dir: str = ""  # photos to calibrate on; empty = scikit-image's bundled photos
    brisque_path: str = ""
    niqe_path: str = ""
    nima_technical_path: str = ""
    nima_aesthetic_path: str = ""
    clip_model_name: str = "openai/clip-vit-base-patch32"
    laion_aesthetic_path: str = ""
    yunet_path: str = ""
    deepface_home: str = ""
    deepface_detector: str = "opencv"
    emotion_max_dim: int = Field(default=640, ge=64, le=4096)
    emotion_model: Literal["deepface", "mini_xception"] = "deepface"
    emotion_mini_xception_path: str = ""
    face_score_threshold: float = Field(default=0.8, gt=0, lt=1)
    mobilenet_path: str = ""
    mobilenet_min_cosine: float = Field(default=0.77, gt=0, le=1)  # near-duplicate link threshold
    tags_model: Literal["mobilenet_v2", "efficientnet_b3"] = "mobilenet_v2"  # ImageNet-1K labels
    tags_path: str = ""
    person_model: Literal["deeplabv3", "ssdlite"] = "deeplabv3"  # prominent-person boxes
    person_path: str = ""
    person_min_area: float = Field(default=0.005, ge=0, lt=1)  # smallest person blob, as a share of the image
    dinov2_model_name: str = "facebook/dinov2-small"
    dinov2_path: str = ""
    classifier_dir: str = ""  # trained per-collection classifiers; empty = MODEL_DIR/classifiers
    caption_model_name: str = "Salesforce/blip-image-captioning-base"
    caption_path: str = ""

    # --- tasks ----------------------------------------------------------------
    max_tasks: int = Field(default=16, ge=1, le=256)
    crop_max_dim: int = Field(default=512, ge=32, le=4096)

    # --- photo sets / clustering --------------------------------------------
    max_cluster_items: int = Field(default=100_000, ge=1)
    max_cluster_images: int = Field(default=200, ge=1)

    # --- LLM review ----------------------------------------------------------
    llm_default_model: str = "openai/gpt-4o-mini"
    llm_allowed_models: str = ""  # fnmatch patterns a request's `model` may name; empty = LLM_DEFAULT_MODEL only
    llm_api_base: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = Field(default=60.0, gt=0)
    llm_max_tokens: int = Field(default=800, ge=16, le=8192)
    llm_image_max_dim: int = Field(default=1024, ge=128, le=4096)

    # --- the image-quality-gate service's names (aliases; see SETTING_ALIASES) ----------------
    blur_min: float | None = Field(default=None, ge=0)  # = BLUR_THRESHOLD
    resize_max_dim: int | None = Field(default=None, ge=64, le=8192)  # = ANALYSIS_MAX_DIM
    max_upload_mb: float | None = Field(default=None, gt=0)  # = MAX_IMAGE_MB
    app_name: str = Field(default="loupe", min_length=1, max_length=100)  # this deployment's name
    app_version: str = Field(default="", max_length=100)  # this deployment's version label; empty = Loupe's version

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _storage_scheme(cls, v: str) -> str:
        """An unknown scheme stops start-up here; the rest of the URI is checked when the app builds the storage.
        The message names the scheme only: the URI may carry a password."""
        v = v.strip()
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            hint = (" (Loupe runs the synchronous storage off the event loop: drop the 'async+')"
                    if scheme.startswith("async+") else "")
            raise ValueError(f"RATE_LIMIT_STORAGE_URI: scheme {scheme + '://' if scheme else '(none)'} is not supported"
                             f"{hint}; use one of {', '.join(s + '://' for s in RATE_LIMIT_STORAGE_SCHEMES)}")
        return v

    @field_validator("bright_max")
    @classmethod
    def _bright_order(cls, v: float, info):  # noqa: ANN001
        lo = info.data.get("bright_min", 0)
        if v <= lo:
            raise ValueError("BRIGHT_MAX must be greater than BRIGHT_MIN")
        return v

    # --- derived -------------------------------------------------------------
    @field_validator("blur_min", "resize_max_dim", "max_upload_mb", mode="before")
    @classmethod
    def _empty_alias_is_unset(cls, v):  # noqa: ANN001
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _apply_aliases(self) -> Settings:
        """An alias sets its Loupe setting; both set to different values is an error naming both."""
        for alias, target in SETTING_ALIASES.items():
            value = getattr(self, alias)
            if value is None:
                continue
            if target in self.model_fields_set and getattr(self, target) != value:
                raise ValueError(
                    f"{alias.upper()}={value:g} and {target.upper()}={getattr(self, target):g} are both set and differ: "
                    f"{alias.upper()} is the image-quality-gate name of {target.upper()}; set only one of them.")
            setattr(self, target, value)
        return self

    @property
    def display_version(self) -> str:
        """APP_VERSION, or Loupe's version when it is not set."""
        return self.app_version or VERSION

    @property
    def api_key_list(self) -> list[str]:
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_key.strip():
            keys.append(self.api_key.strip())
        return keys

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_raw_bytes(self) -> int:
        return int(self.max_raw_mb * 1024 * 1024)

    @property
    def max_read_bytes(self) -> int:
        """The most bytes read for one image before its format is known (the larger of the two limits)."""
        return max(self.max_image_bytes, self.max_raw_bytes)

    def byte_limit(self, head: bytes) -> tuple[int, str]:
        """The byte limit of a file that starts with `head`, and the setting that sets it: MAX_RAW_MB for what
        may be a camera RAW (every TIFF-structured file may), MAX_IMAGE_MB for the rest."""
        from app.imaging.formats import may_be_raw

        return (self.max_raw_bytes, "MAX_RAW_MB") if may_be_raw(head) else (self.max_image_bytes, "MAX_IMAGE_MB")

    @property
    def decode_memory_bytes(self) -> int:
        return int(self.decode_memory_mb * 1024 * 1024)

    @property
    def threads(self) -> int:
        return self.analysis_threads or (os.cpu_count() or 2)

    @property
    def preload_list(self) -> list[str]:
        return [m.strip() for m in self.preload_models.split(",") if m.strip()]


#: RATE_LIMIT_STORAGE_URI's schemes: the `limits` storages whose client Loupe installs (redis) and sets timeouts for
RATE_LIMIT_STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")

#: settings of the services Loupe replaces, read as aliases of Loupe's (image-quality-gate's names; BRIGHT_MIN,
#: BRIGHT_MAX, APP_NAME, APP_VERSION, LOG_LEVEL and LOG_JSON are the same names in both)
SETTING_ALIASES = {"blur_min": "blur_threshold", "resize_max_dim": "analysis_max_dim", "max_upload_mb": "max_image_mb"}


@lru_cache
def get_settings() -> Settings:
    return Settings()
