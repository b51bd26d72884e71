"""The /v1 router: every analysis endpoint behind the optional API key; health and version open."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.v1.endpoints import analyze, cluster, collections, embed, llm, preview, system, tasks
from app.core.ratelimit import guard

# Authentication and rate limits in one dependency (see app.core.ratelimit for the order and the keys).
v1_router = APIRouter(prefix="/v1", dependencies=[Depends(guard)])
v1_router.include_router(analyze.router)
v1_router.include_router(llm.router)
v1_router.include_router(cluster.router)
v1_router.include_router(embed.router)
v1_router.include_router(tasks.router)
v1_router.include_router(collections.router)
v1_router.include_router(preview.router)
v1_router.add_api_route("/operations", system.operations, methods=["GET"], tags=["system"],
                        response_model=system.OperationsResponse, summary="The analyses this instance offers")

# Open endpoints (no API key, no rate limit): probes and version.
public_router = APIRouter()
public_router.add_api_route("/health", system.health, methods=["GET"], tags=["system"],
                            response_model=system.HealthResponse, summary="Liveness and readiness",
                            responses={503: {"model": system.HealthResponse}})
public_router.add_api_route("/v1/health", system.health, methods=["GET"], tags=["system"],
                            response_model=system.HealthResponse, summary="Liveness and readiness (versioned path)",
                            responses={503: {"model": system.HealthResponse}})
public_router.add_api_route("/v1/version", system.version, methods=["GET"], tags=["system"],
                            response_model=system.VersionResponse, summary="Version of Loupe and its libraries")
