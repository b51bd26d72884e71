"""GET /v1/collections."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.common import ranged


class CollectionInfo(BaseModel):
    collection_id: str
    version: str = Field(description="The best version, as the last bake-off ranked them.")
    embedding_model: str = Field(description="The registry model that embeds an image for this classifier.")
    dim: int = Field(description="The embedding's dimension.")
    threshold: float = ranged("In the collection when the probability is at least this.", 0, 1, None)
    metrics: dict[str, float] = Field(default_factory=dict, description="precision, recall, f1, roc_auc (0..1, higher "
                                                                        "is better) on the held-out split; n_train, n_test.")


class CollectionsResponse(BaseModel):
    classifier_dir: str
    collections: list[CollectionInfo]
