"""GET /v1/collections: the collections the `classify` task can answer, with their classifiers' metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.collections.store import ClassifierError, classifier_dir
from app.core.errors import ServiceUnavailable
from app.schemas.collections import CollectionInfo, CollectionsResponse
from app.tasks.classify import store_for

router = APIRouter(tags=["tasks"])


@router.get("/collections", response_model=CollectionsResponse,
            summary="The trained collections (best classifier of each, from CLASSIFIER_DIR/best_models.json)")
async def collections(request: Request) -> CollectionsResponse:
    settings = request.app.state.settings
    try:
        entries = store_for(settings).list()
    except ClassifierError as exc:
        raise ServiceUnavailable(f"best_models.json cannot be read: {exc}") from exc
    return CollectionsResponse(classifier_dir=str(classifier_dir(settings)),
                               collections=[CollectionInfo(**e) for e in entries])
