"""Drop-in routes for the services Loupe replaces, so their clients switch by changing a base URL.

One small module per service, each a thin adapter over Loupe's own reader, orchestrator, task engine
and services (no second pipeline), under its own tag in /docs; authentication, rate limits, the SSRF
guard, the limits and the metrics are the /v1 ones. Errors on these routes are rendered in the
service's own shape (`dialects`). festora-vision-api's names are additive fields of the /v1 responses
(`app.schemas.common.festora_alias`), not routes.
"""
