"""Near-duplicate clustering: vectors in (/v1/cluster) and photo sets in (/v1/cluster/images)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.analysis import ImageResult
from app.schemas.common import ErrorInfo, ImageInput, festora_alias, ranged

EPS_BOUNDS = (1e-6, 2.0)
MIN_SAMPLES_BOUNDS = (1, 1000)


class ClusterRequest(BaseModel):
    embeddings: list[list[float]] = Field(min_length=1, description="One vector per image, all of the same dimension, finite.")
    image_ids: list[str] = Field(min_length=1, description="Unique ids, same length and order as embeddings.")
    eps: float = Field(0.35, ge=EPS_BOUNDS[0], le=EPS_BOUNDS[1],
                       description="DBSCAN neighbourhood radius (cosine distance = 1 − cos, so 0..2; euclidean: same units as the vectors).")
    min_samples: int = Field(2, ge=MIN_SAMPLES_BOUNDS[0], le=MIN_SAMPLES_BOUNDS[1],
                             description="Points (itself included) within eps that make a core point.")
    metric: Literal["cosine", "euclidean"] = "cosine"

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "embeddings": [[0.1, 0.9, 0.0], [0.11, 0.89, 0.01], [0.9, 0.1, 0.2]],
        "image_ids": ["a", "b", "c"], "eps": 0.35, "min_samples": 2, "metric": "cosine"}]})


class VectorCluster(BaseModel):
    cluster_id: int
    size: int
    image_ids: list[str]


class ClusterResponse(BaseModel):
    algorithm: str = Field(description="`dbscan` (scikit-learn, on a sparse radius-neighbours graph).")
    params: dict[str, float | int | str]
    n_clusters: int
    n_noise: int = Field(description="Images in no cluster (label −1).")
    assignments: dict[str, int] = Field(description="image_id → cluster_id (−1 = noise).")
    clusters: list[VectorCluster]
    processing_time_ms: float

    @festora_alias("params.eps")
    def eps_used(self) -> float:
        return float(self.params["eps"])

    @festora_alias("params.min_samples")
    def min_samples_used(self) -> int:
        return int(self.params["min_samples"])

    @festora_alias("len(assignments)", 0, None, None)
    def total_images(self) -> int:
        return len(self.assignments)

    @festora_alias("n_clusters", 0, None, None)
    def num_clusters(self) -> int:
        return self.n_clusters

    @festora_alias("n_noise", 0, None, None)
    def num_noise(self) -> int:
        return self.n_noise


class PhotoSetRequest(BaseModel):
    images: list[ImageInput] = Field(min_length=1, description="The photo set (up to MAX_CLUSTER_IMAGES).")
    eps: float = Field(0.08, ge=EPS_BOUNDS[0], le=EPS_BOUNDS[1],
                       description="Cosine-distance radius on CLIP embeddings for 'same scene' (when CLIP is ready).")
    hash_max_distance: int = Field(12, ge=0, le=32, description="Max Hamming distance (of 64 bits) between perceptual hashes for "
                                   "near-exact duplicates. 12 covers re-saves, resizes, ±20 % exposure, crops of ≤ 5 % of the area and "
                                   "shifts of ≤ 2 %, while distinct natural photos measured ≥ 22 apart.")
    use_embeddings: bool = Field(True, description="Link near-duplicates by embedding too: CLIP when it is ready, "
                                                   "else the MobileNet embedding when its model is there.")
    rank_by_quality_models: bool = Field(True, description="Rank with the full quality score (BRISQUE/NIMA when available); "
                                                           "false = blur/exposure only, faster.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "images": [{"url": "https://example.com/burst-1.jpg", "image_id": "burst-1"},
                   {"url": "https://example.com/burst-2.jpg", "image_id": "burst-2"},
                   {"url": "https://example.com/other.jpg", "image_id": "other"}]}]})


class RankedMember(BaseModel):
    image_id: str
    rank: int = Field(description="1 = best in its group.")
    quality_score: float | None = ranged(
        "The group score members are ranked by: the 0–1 quality score with sharpness measured at the group's "
        "common size, combined with a resolution term (pixels over the group's largest) and a compression term "
        "(JPEG quality over the group's best; lossless = 100).", 0, 1, True)
    ranked_by: Literal["quality_score", "sharpness_exposure"]
    is_best: bool
    rejected_reason: str | None = Field(None, description="Why this shot lost to the best one (null for the best).")


class PhotoGroup(BaseModel):
    group_id: int
    size: int
    best_image_id: str
    reason: str = Field(description="Why the best shot won, in words, with the numbers.")
    members: list[RankedMember] = Field(description="Best first.")
    linked_by: list[Literal["phash", "embedding", "mobilenet"]] = Field(
        description="Which features linked this group: perceptual hash, CLIP embedding (DBSCAN at eps), MobileNet "
                    "embedding (cosine >= MOBILENET_MIN_COSINE).")


class FailedImage(BaseModel):
    image_id: str
    error: ErrorInfo


class PhotoSetResponse(BaseModel):
    api_version: str = "v1"
    features_used: list[Literal["phash", "clip_embedding", "mobilenet"]]
    params: dict[str, float | int | str | bool]
    groups: list[PhotoGroup] = Field(description="Groups of 2+ near-duplicate shots, largest first.")
    singletons: list[str] = Field(description="image_ids with no near-duplicate.")
    failed: list[FailedImage] = Field(default_factory=list, description="Images that could not be read, with their error; "
                                                                       "the rest of the set is still grouped.")
    results: list[ImageResult] = Field(description="Per-image analysis used for ranking, in request order.")
    processing_time_ms: float
