"""POST /v1/cluster (vectors in) and POST /v1/cluster/images (a photo set in)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from app import neighbors
from app.api.deps import ImageRequestSpec, read_image_request, read_json_model, settings_of
from app.api.v1.openapi_extra import body_json_or_form, component_ref
from app.core.errors import ValidationFailed
from app.schemas import cluster as C
from app.schemas.common import ErrorEnvelope
from app.services.photoset import cluster_photoset

router = APIRouter(tags=["photo sets"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429)}


def run_dbscan(req: C.ClusterRequest, max_items: int) -> C.ClusterResponse:
    t0 = time.perf_counter()
    if len(req.embeddings) > max_items:
        raise ValidationFailed(f"{len(req.embeddings)} vectors sent; the limit is {max_items} (MAX_CLUSTER_ITEMS).",
                               detail={"max_cluster_items": max_items, "received": len(req.embeddings)})
    try:
        vectors, ids = neighbors.validate_cluster_input(req.embeddings, req.image_ids, req.metric)
        res = neighbors.dbscan(vectors, eps=req.eps, min_samples=req.min_samples, metric=req.metric,
                               assume_valid=True)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    labels = res.labels.tolist()
    return C.ClusterResponse(
        algorithm="dbscan", params={k: v for k, v in res.params.items()},
        n_clusters=res.n_clusters, n_noise=res.n_noise,
        assignments={i: int(label) for i, label in zip(ids, labels)},
        clusters=[C.VectorCluster(cluster_id=c, size=len(m), image_ids=[ids[k] for k in m])
                  for c, m in enumerate(res.clusters)],
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3))


@router.post("/cluster", response_model=C.ClusterResponse, responses=ERRORS,
             summary="DBSCAN clustering of embedding vectors (no N×N matrix; up to MAX_CLUSTER_ITEMS)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": component_ref(C.ClusterRequest)}}}})
async def cluster_vectors(request: Request) -> C.ClusterResponse:
    settings = settings_of(request)
    req = await read_json_model(request, C.ClusterRequest)
    return await request.app.state.orchestrator.in_pool(run_dbscan, req, settings.max_cluster_items)


class PhotoSetForm(C.PhotoSetRequest):
    """Form fields of the multipart variant (the images come as `file` parts)."""

    images: list = []


PHOTOSET_FORM_FIELDS = [name for name in C.PhotoSetRequest.model_fields if name != "images"]
PHOTOSET = ImageRequestSpec(C.PhotoSetRequest, images="images", options=PhotoSetForm, form_fields=PHOTOSET_FORM_FIELDS,
                            limit=lambda s: s.max_cluster_images, limit_setting="max_cluster_images",
                            unique_in="a photo set")


@router.post("/cluster/images", response_model=C.PhotoSetResponse, responses=ERRORS,
             summary="Group near-duplicate shots of a photo set and pick the best of each group",
             openapi_extra=body_json_or_form(C.PhotoSetRequest, multiple_files=True, form_model=PhotoSetForm,
                                             form_fields=PHOTOSET_FORM_FIELDS))
async def cluster_images(request: Request) -> C.PhotoSetResponse:
    req = await read_image_request(request, PHOTOSET)
    return await cluster_photoset(request.app.state.orchestrator, req.sources, req.opts)
