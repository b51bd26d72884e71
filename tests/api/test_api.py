"""The /v1 API on the real app: inputs, batch, gate, errors, auth, rate limits, health, metrics, docs."""

from __future__ import annotations

import base64

import httpx

from tests.helpers import encode, exposure, gaussian_blur, photo, ramp_png

ENVELOPE_KEYS = {"type", "message", "detail", "request_id"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_envelope(r, status, etype=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert ENVELOPE_KEYS <= set(body["error"]), body
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    if etype:
        assert body["error"]["type"] == etype, body
    return body["error"]


def test_analyze_base64_raw_and_data_uri_agree(client):
    raw = encode(photo("astronaut"))
    r1 = client.post("/v1/analyze", json={"image": {"base64": b64(raw), "image_id": "a"}})
    r2 = client.post("/v1/analyze", json={"image": {"base64": "data:image/jpeg;base64," + b64(raw)}})
    assert r1.status_code == r2.status_code == 200
    a, b = r1.json()["result"], r2.json()["result"]
    assert a["image_id"] == "a" and b["image_id"] == "0"
    assert a["sha256"] == b["sha256"] and a["blur"]["laplacian_variance"] == b["blur"]["laplacian_variance"]
    assert r1.json()["api_version"] == "v1"


def test_analyze_multipart_with_flags(client):
    raw = encode(photo("coffee"))
    r = client.post("/v1/analyze", files={"file": ("coffee.jpg", raw, "image/jpeg")},
                    data={"image_id": "c1", "run_exposure": "false", "run_quality": "false"})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["image_id"] == "c1" and res["blur"]["status"] == "ok"
    assert res["exposure"] is None and res["quality"] is None


def test_analyses_without_models_say_unavailable_not_fake(client):
    raw = encode(photo("astronaut"))
    r = client.post("/v1/analyze", json={"image": {"base64": b64(raw)}, "run_aesthetic": True,
                                         "run_emotion": True, "run_embedding": True, "run_faces": True})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    for key in ("aesthetic", "emotion", "embedding", "faces"):
        assert res[key]["status"] == "unavailable", (key, res[key])
        assert res[key]["error"]["type"] == "model_unavailable"
    assert res["aesthetic"]["nima_score"] is None and res["embedding"]["vector"] is None
    q = res["quality"]
    assert q["status"] == "ok" and {c["name"] for c in q["components"]} == {"sharpness", "noise", "blocking", "exposure"}
    assert set(q["missing"]) == {"brisque", "niqe", "nima_technical"}


def test_blur_and_exposure_verdicts_on_degraded_photos(client):
    def run(rgb):
        r = client.post("/v1/analyze", json={"image": {"base64": b64(encode(rgb))}})
        assert r.status_code == 200
        return r.json()["result"]

    sharp, blurred = run(photo("chelsea")), run(gaussian_blur(photo("chelsea"), 5))
    assert sharp["blur"]["is_blurry"] is False and blurred["blur"]["is_blurry"] is True
    assert blurred["quality"]["score"] < sharp["quality"]["score"]
    assert blurred["quality"]["is_ok"] is False and sharp["quality"]["is_ok"] is True
    dark = run(exposure(photo("chelsea"), 0.2))
    assert dark["exposure"]["verdict"] == "underexposed" and dark["exposure"]["is_underexposed"]
    assert dark["exposure"]["thresholds"]["bright_min"] == 50.0
    assert sharp["blur"]["thresholds"] == {"blur_threshold": 100.0, "analysis_max_dim": 1024}


def test_single_image_errors_use_their_status(client):
    r = client.post("/v1/analyze", json={"image": {"base64": b64(b"plain text, not an image")}})
    assert_envelope(r, 415, "unsupported_media_type")
    raw = encode(photo("rocket"))
    r = client.post("/v1/analyze", json={"image": {"base64": b64(raw[:2000])}})
    assert_envelope(r, 400, "invalid_image")
    r = client.post("/v1/analyze", json={"image": {"base64": "!!!not base64!!!"}})
    assert_envelope(r, 400, "invalid_image")


def test_batch_keeps_order_and_isolates_failures(client):
    images = [
        {"base64": b64(encode(photo("astronaut"))), "image_id": "good-1"},
        {"base64": b64(b"GIF89a-but-truncated"), "image_id": "bad-gif"},
        {"base64": b64(encode(photo("coffee"), "PNG")), "image_id": "good-2"},
        {"url": "http://127.0.0.1:9/x.jpg", "image_id": "ssrf"},
        {"base64": b64(b""), "image_id": "empty"},
    ]
    r = client.post("/v1/analyze/batch", json={"images": images})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["image_id"] for x in body["results"]] == [i["image_id"] for i in images]
    assert body["summary"]["total"] == 5 and body["summary"]["succeeded"] == 2 and body["summary"]["failed"] == 3
    by_id = {x["image_id"]: x for x in body["results"]}
    assert by_id["good-1"]["error"] is None and by_id["good-2"]["blur"]["status"] == "ok"
    assert by_id["bad-gif"]["error"]["type"] == "invalid_image" and by_id["bad-gif"]["blur"] is None
    assert by_id["ssrf"]["error"]["type"] == "url_not_allowed" and by_id["ssrf"]["error"]["status_code"] == 400
    assert by_id["empty"]["error"]["type"] == "invalid_image"


def test_batch_multipart_and_equal_to_single(client):
    files = [("file", (f"{n}.jpg", encode(photo(n)), "image/jpeg")) for n in ("astronaut", "chelsea")]
    r = client.post("/v1/analyze/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["image_id"] for x in results] == ["astronaut.jpg", "chelsea.jpg"]
    single = client.post("/v1/analyze", files={"file": ("chelsea.jpg", encode(photo("chelsea")), "image/jpeg")}).json()
    assert single["result"]["blur"] == results[1]["blur"]
    assert single["result"]["quality"]["score"] == results[1]["quality"]["score"]


def test_batch_limit(client_factory):
    c = client_factory(max_batch_size=3)
    imgs = [{"base64": b64(encode(photo("coffee")))}] * 4
    err = assert_envelope(c.post("/v1/analyze/batch", json={"images": imgs}), 413, "payload_too_large")
    assert err["detail"] == {"max_batch_size": 3, "received": 4}
    files = [("file", (f"{i}.jpg", encode(photo("coffee")), "image/jpeg")) for i in range(4)]
    assert_envelope(c.post("/v1/analyze/batch", files=files), 413, "payload_too_large")
    assert c.post("/v1/analyze/batch", json={"images": imgs[:3]}).status_code == 200


def test_quality_gate(client):
    ok = client.post("/v1/quality", files={"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["is_ok"] is True and body["reasons"] == [] and (body["width"], body["height"]) == (600, 400)
    assert body["thresholds"]["blur_threshold"] == 100.0 and body["thresholds"]["min_side_px"] == 128
    bad = client.post("/v1/quality", json={"base64": b64(encode(gaussian_blur(exposure(photo("coffee"), 0.15), 6)))})
    body = bad.json()
    assert body["is_ok"] is False and body["is_blurry"] and body["is_underexposed"]
    assert any("BLUR_THRESHOLD" in r for r in body["reasons"]) and any("BRIGHT_MIN" in r for r in body["reasons"])
    tiny = client.post("/v1/quality", json={"base64": b64(encode(photo("coffee")[:100, :100]))}).json()
    assert tiny["is_too_small"] is True and tiny["is_ok"] is False


def test_validation_errors_are_422_envelopes(client):
    assert_envelope(client.post("/v1/analyze", json={"image": {}}), 422, "validation_error")
    err = assert_envelope(client.post("/v1/analyze", json={"image": {"url": "http://a", "base64": "AAAA"}}), 422)
    assert "exactly one" in err["message"]
    assert_envelope(client.post("/v1/analyze", json={"image": {"base64": "AAAA"}, "run_blur": "maybe"}), 422)
    assert_envelope(client.post("/v1/analyze", json={"image": {"base64": "AAAA"}, "unknown": 1}), 422)
    assert_envelope(client.post("/v1/analyze", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_envelope(client.post("/v1/analyze/batch", json={"images": []}), 422)
    assert_envelope(client.post("/v1/analyze", files={"other": ("x.jpg", b"1", "image/jpeg")}), 422)


def test_status_envelopes_404_405_415_413_500(client_factory):
    c = client_factory(raise_server_exceptions=False, max_image_mb=0.3, max_raw_mb=0.3, max_batch_size=2)
    assert_envelope(c.get("/v1/nothing-here"), 404, "not_found")
    assert_envelope(c.get("/v1/analyze"), 405, "method_not_allowed")
    assert_envelope(c.post("/v1/analyze", content=b"abc", headers={"content-type": "text/plain"}), 415)
    big = encode(photo("astronaut"), "PNG")
    assert len(big) > 0.3 * 1024 * 1024
    assert_envelope(c.post("/v1/analyze", json={"image": {"base64": b64(big)}}), 413, "image_too_large")
    assert_envelope(c.post("/v1/analyze", files={"file": ("a.png", big, "image/png")}), 413, "image_too_large")
    huge = b"x" * (4 * 1024 * 1024)
    assert_envelope(c.post("/v1/analyze", content=huge, headers={"content-type": "application/json"}), 413,
                    "payload_too_large")

    async def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    c.app.state.orchestrator.analyze = boom
    err = assert_envelope(c.post("/v1/analyze", json={"image": {"base64": b64(encode(photo('coffee')))}}), 500,
                          "internal_error")
    assert "secret" not in err["message"]


def test_request_id_in_and_out(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/health").headers["x-request-id"]) >= 8


def test_api_keys(client_factory):
    c = client_factory(api_keys="k1, k2", api_key="k3")
    img = {"image": {"base64": b64(encode(photo("coffee")))}}
    err = assert_envelope(c.post("/v1/analyze", json=img), 401, "unauthorized")
    assert "X-Api-Key" in err["message"]
    assert_envelope(c.post("/v1/analyze", json=img, headers={"X-Api-Key": "wrong"}), 401, "unauthorized")
    assert_envelope(c.get("/v1/operations"), 401)
    assert c.post("/v1/analyze", json=img, headers={"X-Api-Key": "k2"}).status_code == 200
    assert c.post("/v1/analyze", json=img, headers={"Authorization": "Bearer k3"}).status_code == 200
    # open: health, version, metrics
    assert c.get("/health").status_code == 200 and c.get("/v1/health").status_code == 200
    assert c.get("/v1/version").status_code == 200 and c.get("/metrics").status_code == 200


def test_rate_limit_over_real_http(live_factory):
    server = live_factory(rate_limit="3/minute")
    img = {"image": {"base64": b64(encode(photo("coffee")))}}
    with httpx.Client(base_url=server.base_url, timeout=30) as h:
        codes = [h.post("/v1/analyze", json=img).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = h.post("/v1/analyze", json=img)
        err = assert_envelope(r, 429, "rate_limited")
        assert 0 < int(r.headers["retry-after"]) <= 60 and "3 per 1 minute" in err["message"]
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert h.get("/health").status_code == 200  # probes are never limited
        # without API_KEYS a made-up key is no identity: it counts against the same IP
        for made_up in ("someone", "someone-else", "Bearer x"):
            assert_envelope(h.post("/v1/analyze", json=img, headers={"X-Api-Key": made_up}), 429, "rate_limited")
        # and a forged X-Forwarded-For is not trusted (FORWARDED_ALLOW_IPS is empty)
        assert_envelope(h.post("/v1/analyze", json=img, headers={"X-Forwarded-For": "203.0.113.9"}), 429)


def test_rate_limit_keys_by_api_key(live_factory):
    server = live_factory(rate_limit="2/minute", api_keys="alice,bob")
    with httpx.Client(base_url=server.base_url, timeout=30) as h:
        for _ in range(2):
            assert h.get("/v1/operations", headers={"X-Api-Key": "alice"}).status_code == 200
        assert h.get("/v1/operations", headers={"X-Api-Key": "alice"}).status_code == 429
        assert h.get("/v1/operations", headers={"X-Api-Key": "bob"}).status_code == 200
        # wrong keys get no bucket of their own: they are failed authentications (401), not requests
        assert [h.get("/v1/operations", headers={"X-Api-Key": f"guess-{i}"}).status_code for i in range(3)] == [401] * 3


def test_key_guessing_is_limited_per_ip(live_factory):
    server = live_factory(api_keys="alice", auth_fail_limit="5/minute", rate_limit="100/minute")
    with httpx.Client(base_url=server.base_url, timeout=30) as h:
        codes = [h.get("/v1/operations", headers={"X-Api-Key": f"guess-{i}"}).status_code for i in range(8)]
        assert codes == [401] * 5 + [429] * 3
        r = h.get("/v1/operations", headers={"X-Api-Key": "guess-8"})
        err = assert_envelope(r, 429, "rate_limited")
        assert "failed authentications" in err["message"] and 0 < int(r.headers["retry-after"]) <= 60
        # once the IP is over the limit even a right key is refused, so a guess can no longer be told
        # from a hit; no key at all counts as a failed authentication too
        assert h.get("/v1/operations", headers={"X-Api-Key": "alice"}).status_code == 429
        assert h.get("/v1/operations").status_code == 429
        assert h.get("/health").status_code == 200


def test_forwarded_for_is_trusted_only_from_configured_proxies(live_factory):
    # the test client connects from 127.0.0.1: as a trusted proxy, its X-Forwarded-For names the client
    server = live_factory(rate_limit="2/minute", forwarded_allow_ips="127.0.0.1")
    with httpx.Client(base_url=server.base_url, timeout=30) as h:
        a = {"X-Forwarded-For": "198.51.100.7"}
        b = {"X-Forwarded-For": "198.51.100.8"}
        assert [h.get("/v1/operations", headers=a).status_code for _ in range(3)] == [200, 200, 429]
        assert h.get("/v1/operations", headers=b).status_code == 200
        # a client-written hop left of the real one is ignored: the right-most untrusted hop counts
        spoof = {"X-Forwarded-For": "10.9.9.9, 198.51.100.7"}
        assert h.get("/v1/operations", headers=spoof).status_code == 429


def test_health_reports_models_and_503_when_preload_fails(client_factory):
    c = client_factory()
    body = c.get("/health").json()
    assert body["status"] == "degraded" and body["version"] and body["uptime_s"] >= 0
    assert {"brisque", "clip", "emotion", "nima_technical"} <= set(body["models"])
    assert body["models"]["brisque"]["files_present"] is False
    bad = client_factory(preload_models="brisque")
    r = bad.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert r.json()["models"]["brisque"]["state"] == "failed" and "brisque" in r.json()["problems"][0]
    assert bad.get("/v1/health").status_code == 503


def test_operations_and_version(client):
    ops = {o["name"]: o for o in client.get("/v1/operations").json()["operations"]}
    assert ops["blur"]["ready"] is True and ops["blur"]["settings"]["blur_threshold"] == 100.0
    assert ops["quality"]["models"] == ["brisque", "niqe", "nima_technical"] and ops["quality"]["ready"] is False
    assert ops["embedding"]["available"] is False
    v = client.get("/v1/version").json()
    assert v["api_version"] == "v1" and "fastapi" in v["libraries"]


def test_metrics_count_requests_and_errors(client):
    client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("coffee")))}})
    client.post("/v1/analyze", json={"image": {"base64": b64(b"nope")}})
    text = client.get("/metrics").text
    assert 'loupe_http_requests_total{method="POST",route="/v1/analyze",status="200"}' in text \
        or 'loupe_http_requests_total{route="/v1/analyze",method="POST",status="200"}' in text
    assert 'route="/v1/analyze",status="415"' in text
    assert "loupe_http_request_duration_seconds_bucket" in text
    assert 'loupe_analysis_duration_seconds_count{analysis="gate"}' in text
    assert 'loupe_errors_total{type="unsupported_media_type"}' in text


def test_metrics_can_be_disabled(client_factory):
    assert client_factory(prometheus_enabled=False).get("/metrics").status_code == 404


def test_openapi_states_range_and_direction_of_every_number(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("BlurResult", "ExposureResult", "QualityResult", "AestheticResult", "QualityGateResponse"):
        for field, prop in schemas[name]["properties"].items():
            if field.endswith("_ms") or field in ("width", "height"):
                continue  # timings and sizes are measurements, not scores
            types = {t.get("type") for t in prop.get("anyOf", [prop])}
            if types & {"number"}:
                assert "x-range" in prop and "x-direction" in prop, (name, field)
                assert "better" in prop["description"], (name, field)
    body = spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "AnalyzeRequest" in schemas and schemas["AnalyzeRequest"].get("examples")


def test_gate_is_served_concurrently_without_blocking(live_factory):
    """Many parallel requests all succeed (bounded pool, nothing inline on the loop)."""
    import concurrent.futures

    server = live_factory()
    payload = {"image": {"base64": b64(encode(photo("astronaut")))}}

    def one(_):
        with httpx.Client(base_url=server.base_url, timeout=60) as h:
            return h.post("/v1/analyze", json=payload).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(one, range(24)))
    assert codes == [200] * 24


def test_body_caps_by_endpoint_with_and_without_content_length(live_factory):
    """A single-image endpoint takes one image's worth of body, a batch a batch's; a chunked body with no
    Content-Length is cut at the same cap with a 413 in the envelope (it used to be a 500). The cap is one image
    of the larger of MAX_IMAGE_MB and MAX_RAW_MB (here both 1)."""
    server = live_factory(max_image_mb=1, max_raw_mb=1, max_batch_size=4)
    per_image = (1 << 20) * 4 // 3 + (64 << 10) + (1 << 20)
    big = b"x" * (per_image + 4096)

    def chunked(data: bytes):
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    with httpx.Client(base_url=server.base_url, timeout=30) as h:
        for path in ("/v1/quality", "/v1/analyze", "/v1/analyze/llm"):
            files = {"file": ("a.jpg", big, "image/jpeg")}
            err = assert_envelope(h.post(path, files=files), 413, "payload_too_large")
            assert err["detail"]["max_body_bytes"] == per_image
            hdrs = {"content-type": "application/json"}
            err = assert_envelope(h.post(path, content=chunked(big), headers=hdrs), 413, "payload_too_large")
            assert err["detail"]["max_body_bytes"] == per_image
            boundary = "b0undary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
                    f"Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
            r = h.post(path, content=chunked(body), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            assert_envelope(r, 413, "payload_too_large")
        # the batch endpoint takes that body (the image inside is then refused on its own: 1 MiB limit)
        r = h.post("/v1/analyze/batch", files=[("file", ("a.jpg", big, "image/jpeg"))])
        assert r.status_code == 200 and r.json()["results"][0]["error"]["type"] == "image_too_large"
        # routes without a body of images get a small cap
        assert_envelope(h.post("/v1/embed/text", content=b"[" * (2 << 20),
                               headers={"content-type": "application/json"}), 413, "payload_too_large")


def test_quality_processing_time_covers_the_gate(client, monkeypatch):
    import time as _time

    from app.services import blur as blur_svc

    real = blur_svc.laplacian_variance

    def slow(gray):
        _time.sleep(0.25)
        return real(gray)

    monkeypatch.setattr(blur_svc, "laplacian_variance", slow)
    body = client.post("/v1/quality", files={"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")}).json()
    assert body["processing_time_ms"] >= 250


def test_bodies_are_as_strict_as_their_schema(client):
    """JSON types are not coerced (the schema says boolean, so 1 and "yes" are 422); a form field the
    endpoint does not know, or a flag sent twice, is a 422 like an unknown JSON field."""
    img = {"base64": b64(encode(photo("coffee")))}
    for bad in ({"run_blur": 1}, {"run_blur": "yes"}, {"run_faces": None}):
        assert_envelope(client.post("/v1/analyze", json={"image": img, **bad}), 422, "validation_error")
    assert_envelope(client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("coffee"))),
                                                               "image_id": 7}}), 422, "validation_error")
    assert_envelope(client.post("/v1/analyze", json={"image": {"url": None, "base64": img["base64"]}}), 422)
    files = {"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")}
    err = assert_envelope(client.post("/v1/analyze", files=files, data={"run_bluur": "true"}), 422, "validation_error")
    assert err["detail"]["unknown_fields"] == ["run_bluur"]
    err = assert_envelope(client.post("/v1/analyze", files=files, data={"run_faces": ["true", "false"]}), 422)
    assert err["detail"]["repeated_fields"] == ["run_faces"]
    assert_envelope(client.post("/v1/quality", files=files, data={"run_faces": "true"}), 422, "validation_error")
    assert_envelope(client.post("/v1/analyze", files=files, data={"image_id": "x" * 257}), 422)
    ok = client.post("/v1/analyze", files=files, data={"run_faces": "false", "run_blur": "true", "image_id": "c"})
    assert ok.status_code == 200 and ok.json()["result"]["image_id"] == "c"


def test_decode_budget_refuses_a_burst_of_near_limit_pngs(client_factory):
    """A batch of small files that each decode to millions of pixels: with room for one decode at a time
    and no wait, the first is decoded and the others get 503 server_busy in their own results."""
    from app.imaging.decode import probe

    side = 2400
    data = ramp_png(side)
    cost = probe(data, max_pixels=side * side, min_dim=1024).cost_bytes
    c = client_factory(max_image_pixels=side * side, decode_memory_mb=cost * 1.5 / (1 << 20), decode_wait_s=0,
                       batch_concurrency=6)
    files = [("file", (f"{i}.png", data, "image/png")) for i in range(6)]
    body = c.post("/v1/analyze/batch", files=files, data={"run_quality": "false"}).json()
    errors = [r["error"] for r in body["results"]]
    busy = [e for e in errors if e is not None]
    assert 1 <= body["summary"]["succeeded"] < 6 and len(busy) == body["summary"]["failed"]
    assert all(e["type"] == "server_busy" and e["status_code"] == 503 for e in busy)
    assert busy[0]["detail"]["retry_after_s"] >= 1
    # with a wait allowed, the same burst is decoded one after the other and nothing is refused
    c2 = client_factory(max_image_pixels=side * side, decode_memory_mb=cost * 1.5 / (1 << 20), decode_wait_s=60,
                        batch_concurrency=6)
    body = c2.post("/v1/analyze/batch", files=files, data={"run_quality": "false"}).json()
    assert body["summary"]["succeeded"] == 6
    assert c2.app.state.orchestrator.decode_budget.in_use == 0


def test_decode_budget_503_on_a_single_image_has_retry_after(client_factory):
    c = client_factory(decode_memory_mb=64, decode_wait_s=0.2)
    budget = c.app.state.orchestrator.decode_budget
    budget.free = 0  # as if other requests were decoding large images right now
    try:
        r = c.post("/v1/quality", files={"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")})
        err = assert_envelope(r, 503, "server_busy")
        assert r.headers["retry-after"] == "1" and "DECODE_MEMORY_MB" in err["message"]
        r = c.post("/v1/analyze", files={"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")})
        assert_envelope(r, 503, "server_busy")
        assert r.headers["retry-after"] == "1"
    finally:
        budget.free = budget.total
    assert c.post("/v1/quality", files={"file": ("c.jpg", encode(photo("coffee")), "image/jpeg")}).status_code == 200
