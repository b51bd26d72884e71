"""POST /v1/analyze/llm and /v1/analyze/llm/group against a REAL OpenAI-compatible HTTP server on 127.0.0.1.

Nothing in LiteLLM is mocked: Loupe runs under uvicorn on a free local port, LiteLLM
(`openai/test-vision` with LLM_API_BASE) talks HTTP to a scripted chat-completions
server, and the tests check both what Loupe answered and what the server received.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import Settings
from app.main import create_app
from tests.servers import FakeLLM, LiveServer, Reply
from app.schemas.review import LlmReview
from app.llm.errors import scrub
from app.llm.parse import InvalidOutput, extract_json
from app.llm.prompt import wire_schema
from app.llm.provider import PLACEHOLDER_KEY
from tests.helpers import encode, photo

SECRET = "sk-test-SECRET-0123456789abcdef"
MAX_DIM = 256


class ImageServer:
    """Serves one JPEG at /private/<path> (the URL-input test); records the paths asked for."""

    def __init__(self, data: bytes):
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.hits.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/jpeg")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoupeServer(LiveServer):
    """The real app under uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, settings: Settings):
        super().__init__(create_app(settings))


def make_settings(**kw) -> Settings:
    base: dict[str, Any] = {
        "_env_file": None, "llm_default_model": "openai/test-vision", "llm_timeout_s": 1.0,
        "llm_image_max_dim": MAX_DIM, "allow_private_urls": True, "api_keys": "", "api_key": "", "rate_limit": "",
        "log_level": "WARNING", "preload_models": ""}
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def llm():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture(scope="module")
def loupe(llm):
    server = LoupeServer(make_settings(llm_api_base=llm.base, llm_allowed_models="openai/*"))
    yield server
    server.close()


@pytest.fixture()
def http(loupe, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with httpx.Client(base_url=loupe.url, timeout=30, trust_env=False) as client:
        yield client


# --- data ---------------------------------------------------------------------------------------------------
COFFEE = encode(photo("coffee"))        # 600 x 400
ASTRONAUT = encode(photo("astronaut"))  # 512 x 512
CHELSEA = encode(photo("chelsea"))      # 451 x 300


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD = {
    "overall_score": 7, "discard_reason": None,
    "composition": "Centred cup, slightly tilted.", "subject": "A cup of coffee, sharp.",
    "lighting": "Soft daylight, warm tones.", "background_quality": "Plain wooden table, no clutter.",
    "highlights": ["Sharp foam", "Warm colours"], "issues": ["Tight crop"],
    "summary": "A pleasant, usable food shot.",
}


def good(**over) -> str:
    return json.dumps({**GOOD, **over})


def group_answer(verdicts: list[tuple[str, int]], best: str) -> str:
    return json.dumps({"images": [{"image_id": i, "score": s, "notes": f"note on {i}"} for i, s in verdicts],
                       "best_image_id": best, "reason": f"{best} is the sharpest.", "summary": "Three similar shots."})


def image_parts(request: dict[str, Any]) -> list[str]:
    urls = []
    for msg in request["json"]["messages"]:
        if isinstance(msg["content"], list):
            urls += [p["image_url"]["url"] for p in msg["content"] if p.get("type") == "image_url"]
    return urls


def decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix), uri[:40]
    data = base64.b64decode(uri[len(prefix):])
    assert data[:3] == b"\xff\xd8\xff"
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    return img


def assert_envelope(resp: httpx.Response, status: int, etype: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["type"] == etype
    assert set(err) == {"type", "message", "detail", "request_id"}
    assert "Traceback" not in resp.text
    return err


# --- single review ---------------------------------------------------------------------------------------------
def test_good_json_review_and_what_the_server_received(http, llm):
    llm.script(Reply(good()))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE), "image_id": "cup"}, "max_tokens": 555})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {k: body[k] for k in GOOD} == GOOD
    assert body["image_id"] == "cup"
    assert body["model_used"] == "openai/test-vision"
    assert body["provider_model"] == "test-vision"
    assert body["tokens_used"] == 1120
    assert body["attempts"] == 1
    assert body["processing_ms"] > 0
    assert body["image_sent"] == {"image_id": "cup", "format": "JPEG", "width_px": 256, "height_px": 171,
                                  "bytes": body["image_sent"]["bytes"]}

    [req] = llm.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {PLACEHOLDER_KEY}"  # keyless local server
    sent = req["json"]
    assert sent["model"] == "test-vision"
    assert sent["max_tokens"] == 555
    rf = sent["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"] == wire_schema(LlmReview)
    assert set(rf["json_schema"]["schema"]["required"]) == set(GOOD)
    system = sent["messages"][0]
    assert system["role"] == "system" and "overall_score" in system["content"] and "JSON" in system["content"]
    [uri] = image_parts(req)
    img = decode_data_uri(uri)
    assert img.size == (256, 171)
    assert body["image_sent"]["bytes"] == len(base64.b64decode(uri.split(",", 1)[1]))


def test_url_input_is_fetched_by_loupe_and_never_sent_to_the_provider(http, llm):
    images = ImageServer(ASTRONAUT)
    try:
        url = f"{images.base}/private/album-7731/astronaut.jpg?sig=caller-signature-42"
        llm.script(Reply(good(overall_score=9)))
        resp = http.post("/v1/analyze/llm", json={"image": {"url": url}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["overall_score"] == 9
        assert resp.json()["image_id"] == "0"
        assert images.hits == ["/private/album-7731/astronaut.jpg?sig=caller-signature-42"]
        [req] = llm.requests
        for needle in (url, images.base, "album-7731", "caller-signature-42", "astronaut.jpg"):
            assert needle not in req["raw"]
        [uri] = image_parts(req)
        assert decode_data_uri(uri).size == (256, 256)
    finally:
        images.close()


def test_multipart_upload_with_form_fields(http, llm):
    llm.script(Reply(good()))
    resp = http.post("/v1/analyze/llm", files={"file": ("chelsea.jpg", CHELSEA, "image/jpeg")},
                     data={"model": "openai/other-vision", "custom_prompt": "Judge it as a pet portrait.",
                           "max_tokens": "321"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_used"] == "openai/other-vision" and body["image_id"] == "chelsea.jpg"
    [req] = llm.requests
    assert req["json"]["model"] == "other-vision"
    assert req["json"]["max_tokens"] == 321
    assert "Judge it as a pet portrait." in req["raw"]
    assert decode_data_uri(image_parts(req)[0]).size == (256, 170)


def test_default_max_tokens_is_the_setting(http, llm):
    llm.script(Reply("```json\n" + good() + "\n```"))  # fenced JSON is accepted
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 200, resp.text
    assert llm.requests[0]["json"]["max_tokens"] == Settings(_env_file=None).llm_max_tokens


def test_bad_json_then_good_retries_once_with_the_complaint(http, llm):
    llm.script(Reply("Sure! The photo looks nice, I would give it a 7."), Reply(good(overall_score=6)))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["overall_score"] == 6 and body["attempts"] == 2 and body["tokens_used"] == 2240
    assert len(llm.requests) == 2
    first, second = (r["json"]["messages"] for r in llm.requests)
    assert len(second) == len(first) + 2
    assert second[-2] == {"role": "assistant", "content": "Sure! The photo looks nice, I would give it a 7."}
    assert second[-1]["role"] == "user"
    assert "could not be used" in second[-1]["content"] and "not JSON" in second[-1]["content"]
    assert image_parts(llm.requests[1])  # the image is still in the conversation


def test_schema_invalid_then_good_names_the_field(http, llm):
    llm.script(Reply(good(overall_score=14, highlights=["a", "b", "c", "d", "e", "f"])), Reply(good()))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["attempts"] == 2
    complaint = llm.requests[1]["json"]["messages"][-1]["content"]
    assert "overall_score" in complaint and "highlights" in complaint


def test_invalid_twice_is_502_llm_invalid_output(http, llm):
    llm.script(Reply("not json at all"), Reply(good(overall_score=0)))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    err = assert_envelope(resp, 502, "llm_invalid_output")
    assert err["detail"]["attempts"] == 2 and "overall_score" in err["detail"]["reason"]
    assert len(llm.requests) == 2


def test_truncated_reply_tells_the_model_it_was_cut_off(http, llm):
    llm.script(Reply(good()[:60], finish_reason="length"), Reply(good()))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}, "max_tokens": 64})
    assert resp.status_code == 200, resp.text
    assert "cut off at max_tokens=64" in llm.requests[1]["json"]["messages"][-1]["content"]


def test_slow_server_is_504_llm_timeout(http, llm):
    llm.script(Reply(good(), delay=3.0))
    t0 = time.perf_counter()
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    elapsed = time.perf_counter() - t0
    err = assert_envelope(resp, 504, "llm_timeout")
    assert err["detail"]["timeout_s"] == 1.0
    assert elapsed < 2.9  # LLM_TIMEOUT_S=1 was applied, not the server's 3 s
    assert len(llm.requests) == 1  # num_retries=0


def test_server_500_is_502_llm_provider_error_and_its_body_stays_in_the_log(http, llm, caplog):
    llm.script(Reply(status=500, error="CUDA out of memory on internal-gpu-node-7"))
    with caplog.at_level("WARNING", logger="loupe.llm"):
        resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    err = assert_envelope(resp, 502, "llm_provider_error")
    assert err["detail"]["provider_status"] == 500
    assert "internal-gpu-node-7" not in resp.text and "reason" not in err["detail"]  # never echoed …
    assert "internal-gpu-node-7" in caplog.text  # … but logged for the operator
    assert len(llm.requests) == 1


def test_server_401_is_503_and_the_key_is_never_echoed(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hosted-provider-key-must-not-travel")
    llm.script(Reply(status=401, error=f"Incorrect API key provided: {SECRET}. Authorization: Bearer {SECRET}"))
    with TestClient(create_app(make_settings(llm_api_base=llm.base, llm_api_key=SECRET))) as client:
        resp = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    err = assert_envelope(resp, 503, "llm_not_configured")
    sent = llm.requests[0]["headers"]["authorization"]
    assert sent == f"Bearer {SECRET}"  # LLM_API_KEY goes to LLM_API_BASE, never OPENAI_API_KEY …
    assert "must-not-travel" not in str(llm.requests[0])
    assert SECRET not in resp.text and "0123456789abcdef" not in resp.text  # … and never comes back
    assert "Incorrect API key" not in resp.text and err["detail"]["provider_status"] == 401


def test_server_429_and_404_are_502(http, llm):
    for status in (429, 404):
        llm.script(Reply(status=status, error=f"scripted {status}"))
        resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
        err = assert_envelope(resp, 502, "llm_provider_error")
        assert err["detail"]["provider_status"] == status


def test_server_without_structured_outputs_gets_the_schema_in_the_prompt(http, llm):
    refused = Reply(status=400, error="response_format of type json_schema is not supported by this server")
    llm.script(Reply(good(), when_response_format=refused), Reply(good()))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["attempts"] == 1
    assert [("response_format" in r["json"]) for r in llm.requests] == [True, False]
    assert "overall_score" in llm.requests[1]["json"]["messages"][0]["content"]


def test_missing_usage_gives_null_tokens(http, llm):
    llm.script(Reply(good(), usage={}))
    resp = http.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["tokens_used"] is None


def test_bad_requests_are_4xx_and_never_reach_the_model(http, llm):
    llm.script()
    cases = [
        ({"image": {"base64": b64(COFFEE)}, "model": "no spaces allowed"}, 422, "validation_error"),
        ({"image": {"base64": b64(COFFEE)}, "model": "nosuchprovider/x"}, 422, "validation_error"),
        ({"image": {"base64": b64(COFFEE)}, "max_tokens": 5}, 422, "validation_error"),
        ({"image": {"base64": b64(COFFEE)}, "custom_prompt": "x" * 2001}, 422, "validation_error"),
        ({"image": {"base64": b64(COFFEE)}, "extra": 1}, 422, "validation_error"),
        ({"image": {"base64": b64(b"not an image at all")}}, 415, "unsupported_media_type"),
        ({"image": {"url": "ftp://example.com/a.jpg"}}, 400, "url_not_allowed"),
    ]
    for payload, status, etype in cases:
        assert_envelope(http.post("/v1/analyze/llm", json=payload), status, etype)
    assert_envelope(http.post("/v1/analyze/llm", content=b"x", headers={"content-type": "text/plain"}),
                    415, "unsupported_media_type")
    assert llm.requests == []


# --- group ---------------------------------------------------------------------------------------------------------
def group_payload(**kw) -> dict[str, Any]:
    return {"images": [{"base64": b64(COFFEE), "image_id": "a"}, {"base64": b64(ASTRONAUT), "image_id": "b"},
                       {"base64": b64(CHELSEA), "image_id": "c"}], **kw}


def test_group_review_picks_a_best_shot(http, llm):
    llm.script(Reply(group_answer([("c", 5), ("a", 6), ("b", 8)], "b")))
    resp = http.post("/v1/analyze/llm/group", json=group_payload(custom_prompt="Prefer the astronaut."))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [v["image_id"] for v in body["images"]] == ["a", "b", "c"]  # the request's order
    assert [v["score"] for v in body["images"]] == [6, 8, 5]
    assert body["best_image_id"] == "b" and body["reason"] and body["summary"]
    assert body["model_used"] == "openai/test-vision" and body["tokens_used"] == 1120 and body["attempts"] == 1
    assert [(s["image_id"], s["width_px"], s["height_px"]) for s in body["images_sent"]] == [
        ("a", 256, 171), ("b", 256, 256), ("c", 256, 170)]

    [req] = llm.requests
    sizes = [decode_data_uri(u).size for u in image_parts(req)]
    assert sizes == [(256, 171), (256, 256), (256, 170)]
    schema = req["json"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["best_image_id"]["enum"] == ["a", "b", "c"]
    assert schema["properties"]["images"]["items"]["properties"]["image_id"]["enum"] == ["a", "b", "c"]
    assert req["json"]["max_tokens"] == 800  # max(LLM_MAX_TOKENS, 300 + 150 * 3)
    assert "Prefer the astronaut." in req["raw"]
    texts = [p["text"] for p in req["json"]["messages"][1]["content"] if p["type"] == "text"]
    assert texts[1:] == ['Shot id: "a"', 'Shot id: "b"', 'Shot id: "c"']


def test_group_invented_best_id_retries_then_502(http, llm):
    bad = group_answer([("a", 6), ("b", 8), ("c", 5)], "z")
    llm.script(Reply(bad), Reply(bad))
    resp = http.post("/v1/analyze/llm/group", json=group_payload())
    err = assert_envelope(resp, 502, "llm_invalid_output")
    assert "'z'" in err["detail"]["reason"]
    assert len(llm.requests) == 2
    assert "best_image_id 'z' is not one of the ids" in llm.requests[1]["json"]["messages"][-1]["content"]


def test_group_invented_shot_id_then_good(http, llm):
    llm.script(Reply(group_answer([("a", 6), ("b", 8), ("x", 5)], "b")),
               Reply(group_answer([("a", 6), ("b", 8), ("c", 5)], "a")))
    resp = http.post("/v1/analyze/llm/group", json=group_payload())
    assert resp.status_code == 200, resp.text
    assert resp.json()["best_image_id"] == "a" and resp.json()["attempts"] == 2
    complaint = llm.requests[1]["json"]["messages"][-1]["content"]
    assert "['x']" in complaint and "['c']" in complaint


def test_group_unreadable_shot_names_it_and_never_calls_the_model(http, llm):
    llm.script()
    payload = group_payload()
    payload["images"][1] = {"base64": b64(b"definitely not a picture"), "image_id": "broken-shot"}
    err = assert_envelope(http.post("/v1/analyze/llm/group", json=payload), 415, "unsupported_media_type")
    assert "broken-shot" in err["message"]
    assert err["detail"]["image_id"] == "broken-shot" and err["detail"]["index"] == 1
    payload["images"][2] = {"url": "http://127.0.0.1:9/nothing.jpg", "image_id": "gone"}
    err = assert_envelope(http.post("/v1/analyze/llm/group", json=payload), 415, "unsupported_media_type")
    assert err["detail"]["unreadable_image_ids"] == ["broken-shot", "gone"]
    assert llm.requests == []


def test_group_counts_and_ids_are_checked(http, llm):
    llm.script()
    one = {"images": [{"base64": b64(COFFEE)}]}
    assert_envelope(http.post("/v1/analyze/llm/group", json=one), 422, "validation_error")
    eleven = {"images": [{"base64": b64(COFFEE), "image_id": str(i)} for i in range(11)]}
    assert_envelope(http.post("/v1/analyze/llm/group", json=eleven), 422, "validation_error")
    dup = {"images": [{"base64": b64(COFFEE), "image_id": "same"}, {"base64": b64(CHELSEA), "image_id": "same"}]}
    err = assert_envelope(http.post("/v1/analyze/llm/group", json=dup), 422, "validation_error")
    assert err["detail"]["duplicate_image_ids"] == ["same"]
    files = [("file", ("only.jpg", COFFEE, "image/jpeg"))]
    assert_envelope(http.post("/v1/analyze/llm/group", files=files), 422, "validation_error")
    assert llm.requests == []


def test_group_multipart_default_ids(http, llm):
    llm.script(Reply(group_answer([("0", 4), ("1", 7)], "1")))
    files = [("file", ("x.jpg", COFFEE, "image/jpeg")), ("file", ("y.jpg", CHELSEA, "image/jpeg"))]
    resp = http.post("/v1/analyze/llm/group", files=files, data={"image_id": ["0", "1"], "max_tokens": "2000"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["best_image_id"] == "1"
    assert llm.requests[0]["json"]["max_tokens"] == 2000


# --- configuration errors (no network needed) ----------------------------------------------------------------------
def test_missing_keys_are_503_llm_not_configured(monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with TestClient(create_app(make_settings(llm_api_base="", llm_default_model="openai/gpt-4o-mini",
                                             llm_allowed_models="openai/*, anthropic/*"))) as client:
        for model, env in ((None, "OPENAI_API_KEY"), ("anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY")):
            payload = {"image": {"base64": b64(COFFEE)}, **({"model": model} if model else {})}
            resp = client.post("/v1/analyze/llm", json=payload)
            assert resp.status_code == 503, resp.text
            err = resp.json()["error"]
            assert err["type"] == "llm_not_configured"
            assert env in err["detail"]["missing_env"] and env in err["message"]


def test_unreachable_api_base_is_502(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with TestClient(create_app(make_settings(llm_api_base=f"http://127.0.0.1:{port}/v1"))) as client:
        resp = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["type"] == "llm_provider_error"


class Listener:
    """A bare TCP listener on 127.0.0.1 that records every connection it gets (it must get none)."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(2)
        self.sock.close()


LOCAL_PROVIDER_ENV = ("OLLAMA_API_BASE", "LM_STUDIO_API_BASE", "LLAMAFILE_API_BASE", "HOSTED_VLLM_API_BASE",
                      "LEMONADE_API_BASE", "DOCKER_MODEL_RUNNER_API_BASE", "LANGFLOW_API_BASE", "OPENAI_BASE_URL")
CALLER_MODELS = ("ollama/llava", "ollama_chat/llava", "llamafile/llava", "lemonade/llava", "docker_model_runner/llava",
                 "langflow/llava", "hosted_vllm/llava", "lm_studio/llava", "openai/gpt-4o")


def test_a_caller_never_chooses_where_loupe_connects(llm, monkeypatch):
    """The `model` field cannot send Loupe anywhere: only LLM_ALLOWED_MODELS (default: the default model)
    is accepted, and providers that would connect to a local default address need LLM_API_BASE."""
    listeners = [Listener()]
    for port in (11434, 8000, 8080, 1234):  # LiteLLM's defaults for Ollama, Lemonade, llamafile, LM Studio
        try:
            listeners.append(Listener(port))
        except OSError:
            pass  # in use here: the environment variables below still point every provider at a listener
    for var in LOCAL_PROVIDER_ENV:
        monkeypatch.setenv(var, f"http://127.0.0.1:{listeners[0].port}")
    llm.script()
    try:
        with TestClient(create_app(make_settings(llm_api_base=llm.base))) as client:
            for model in CALLER_MODELS:
                resp = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}, "model": model})
                err = assert_envelope(resp, 422, "validation_error")
                assert err["detail"]["allowed_models"] == ["openai/test-vision"] and "LLM_ALLOWED_MODELS" in err["message"]
                files = {"file": ("c.jpg", COFFEE, "image/jpeg")}
                assert_envelope(client.post("/v1/analyze/llm", files=files, data={"model": model}), 422,
                                "validation_error")
                group = {"images": [{"base64": b64(COFFEE), "image_id": "a"}, {"base64": b64(CHELSEA), "image_id": "b"}],
                         "model": model}
                assert_envelope(client.post("/v1/analyze/llm/group", json=group), 422, "validation_error")
        # an operator who allows every model still decides where it connects: no LLM_API_BASE, no local provider
        with TestClient(create_app(make_settings(llm_api_base="", llm_allowed_models="*"))) as client:
            for model in CALLER_MODELS[:-1]:
                resp = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}, "model": model})
                assert resp.status_code in (422, 503), (model, resp.text)
                assert resp.json()["error"]["type"] in ("validation_error", "llm_not_configured")
    finally:
        for listener in listeners:
            listener.close()
    assert [listener.connections for listener in listeners] == [0] * len(listeners)
    assert llm.requests == []


def test_allowed_patterns_and_the_configured_base(llm):
    """An allowed model goes to LLM_API_BASE and nowhere else."""
    llm.script(Reply(good()))
    with TestClient(create_app(make_settings(llm_api_base=llm.base, llm_allowed_models="openai/*-vision"))) as client:
        ok = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}, "model": "openai/cheap-vision"})
        assert ok.status_code == 200, ok.text
        assert_envelope(client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)},
                                                             "model": "openai/gpt-4o"}), 422, "validation_error")
    assert [r["json"]["model"] for r in llm.requests] == ["cheap-vision"]


def test_bad_default_model_is_503(monkeypatch):
    with TestClient(create_app(make_settings(llm_default_model="nosuchprovider-model"))) as client:
        resp = client.post("/v1/analyze/llm", json={"image": {"base64": b64(COFFEE)}})
    assert resp.status_code == 503 and resp.json()["error"]["type"] == "llm_not_configured"


# --- pure pieces -------------------------------------------------------------------------------------------------------
def test_extract_json_tolerates_fences_and_prose_only_around_one_object():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here you go: {"a": {"b": 2}} hope it helps') == {"a": {"b": 2}}
    for bad in ("", None, "[1, 2]", "{'a': 1}", "no json"):
        with pytest.raises(InvalidOutput):
            extract_json(bad)


def test_scrub_removes_keys_and_tracebacks(monkeypatch):
    monkeypatch.setenv("MY_PROVIDER_API_KEY", "plainsecretvalue")
    text = ("bad key sk-ant-api03-abcdefghijk and AIzaSyA12345678901234567890123 and plainsecretvalue "
            "https://x/y?key=zzzzzz Authorization: Bearer abc.def.ghi\nTraceback (most recent call last):\n  File")
    out = scrub(text)
    for leaked in ("sk-ant", "AIzaSy", "plainsecretvalue", "zzzzzz", "abc.def.ghi", "Traceback", "File"):
        assert leaked not in out


def test_openapi_documents_both_endpoints_with_ranges(loupe):
    schema = httpx.get(f"{loupe.url}/openapi.json").json()
    for path in ("/v1/analyze/llm", "/v1/analyze/llm/group"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}
        assert {"model", "custom_prompt", "max_tokens"} <= set(body["multipart/form-data"]["schema"]["properties"])
    comps = schema["components"]["schemas"]
    score = comps["LlmReviewResponse"]["properties"]["overall_score"]
    assert score["x-range"] == [1, 10] and score["x-higher-is-better"] is True and "Range 1..10" in score["description"]
    assert comps["GroupImageVerdict"]["properties"]["score"]["x-range"] == [1, 10]
    assert comps["LlmReviewResponse"]["properties"]["tokens_used"]["x-higher-is-better"] is False
