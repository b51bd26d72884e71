"""What the model reads: Loupe's own JPEG of the image, the answer's JSON schema, and the words around them.

* The image is Loupe's own JPEG re-encode (longest side at most LLM_IMAGE_MAX_DIM)
  sent as a `data:image/jpeg;base64,…` URI: the provider never receives a caller's
  URL, and never has to fetch anything.
* The answer's JSON schema is sent twice: as `response_format` where the provider
  supports it (see `app.llm.client`), and in the system prompt for every model. The
  schema sent is reduced to the subset every provider's structured-output mode
  accepts (all fields required, nullable instead of optional, no additional
  properties, no numeric or length keywords); `app.llm.parse` checks the full
  constraints with Pydantic afterwards.
* `complaint`, the retry turn, is here too: every word the model reads is in this file.

All pure; `encode_for_llm` is CPU work and runs in the pool.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel

from app.imaging.decode import DecodedImage
from app.schemas.review import LlmGroupReview, LlmImageSent

JPEG_QUALITY = 90


@dataclass
class EncodedImage:
    image_id: str | None
    data_uri: str
    width: int
    height: int
    n_bytes: int

    def sent(self) -> LlmImageSent:
        return LlmImageSent(image_id=self.image_id, width_px=self.width, height_px=self.height, bytes=self.n_bytes)


def encode_for_llm(image: DecodedImage, max_dim: int, image_id: str | None = None,
                   quality: int = JPEG_QUALITY) -> EncodedImage:
    """Loupe's own JPEG of the decoded pixels, longest side at most `max_dim`, as a data URI (CPU: run in the pool)."""
    rgb = image.rgb_max(max_dim)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    h, w = rgb.shape[:2]
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return EncodedImage(image_id=image_id, data_uri=uri, width=int(w), height=int(h), n_bytes=len(data))


_WIRE_KEYS = {"type", "properties", "required", "items", "description", "enum", "anyOf"}


def wire_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the subset all structured-output modes accept.

    $refs inlined, every property required, `additionalProperties: false`, nullable as
    `anyOf [.., null]`, and no minimum/maximum/length keywords (those stay in the
    descriptions and are checked by Pydantic afterwards).
    """
    full = model.model_json_schema()
    defs = full.pop("$defs", {})

    def clean(node: Any) -> Any:
        if isinstance(node, list):
            return [clean(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return clean(merged)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in _WIRE_KEYS:
                continue
            if key == "properties":
                out[key] = {name: clean(sub) for name, sub in value.items()}
            elif key in ("items", "anyOf"):
                out[key] = clean(value)
            else:
                out[key] = value
        if out.get("type") == "object" or "properties" in out:
            out["type"] = "object"
            out["required"] = list(out.get("properties", {}))
            out["additionalProperties"] = False
        return out

    return clean(full)


def group_wire_schema(ids: list[str]) -> dict[str, Any]:
    schema = wire_schema(LlmGroupReview)
    schema["properties"]["images"]["items"]["properties"]["image_id"]["enum"] = list(ids)
    schema["properties"]["best_image_id"]["enum"] = list(ids)
    schema["properties"]["images"]["description"] = f"Exactly {len(ids)} entries, one per shot, in the order given."
    return schema


_JSON_RULES = (
    "Reply with ONE JSON object and nothing else: no prose before or after it, no markdown, no code fences. "
    "It must validate against this JSON schema (every field is required; use null only where the schema allows it):\n"
)

SINGLE_SYSTEM = (
    "You are an experienced photo editor reviewing one photograph for a photo-culling tool. Judge what you can "
    "see: focus and sharpness, exposure, composition, the subject, the light and the background. Be specific, "
    "honest and brief; never invent details that are not in the image.\n"
    "overall_score is an integer from 1 (unusable) to 10 (outstanding); 5 is an ordinary, acceptable snapshot. "
    "discard_reason is null unless the photo should be thrown away (badly out of focus, subject cut off, eyes "
    "closed, grossly over- or underexposed, nothing of interest), then one short sentence saying why. "
    "highlights and issues hold at most 5 short items each and may be empty.\n"
)

GROUP_SYSTEM = (
    "You are an experienced photo editor. You get several shots of the same scene, each introduced by its id. "
    "Compare them and pick the single best one to keep: sharpness of the subject, expression and eyes, timing, "
    "composition, exposure. Give every shot an integer score from 1 (unusable) to 10 (outstanding) and a short note "
    "(one sentence). `images` has exactly one entry per shot, in the order given, each with its id exactly as "
    "given; best_image_id is one of those ids. Never invent ids.\n"
)


def _system(text: str, schema: dict[str, Any]) -> str:
    return text + _JSON_RULES + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _custom(custom_prompt: str | None) -> str:
    if not custom_prompt or not custom_prompt.strip():
        return ""
    return ("\n\nAdditional instructions from the user (they do not change the JSON format above):\n"
            + custom_prompt.strip())


def single_messages(img: EncodedImage, custom_prompt: str | None, schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": _system(SINGLE_SYSTEM, schema)},
        {"role": "user", "content": [
            {"type": "text", "text": "Review this photo and answer with the JSON object." + _custom(custom_prompt)},
            {"type": "image_url", "image_url": {"url": img.data_uri}},
        ]},
    ]


def group_messages(imgs: list[EncodedImage], custom_prompt: str | None,
                   schema: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [str(i.image_id) for i in imgs]
    parts: list[dict[str, Any]] = [{"type": "text", "text": (
        f"Here are {len(imgs)} shots of one scene. Their ids, in order: {json.dumps(ids, ensure_ascii=False)}. "
        "Which one is best, and why? Answer with the JSON object." + _custom(custom_prompt))}]
    for img in imgs:
        parts.append({"type": "text", "text": f"Shot id: {json.dumps(str(img.image_id), ensure_ascii=False)}"})
        parts.append({"type": "image_url", "image_url": {"url": img.data_uri}})
    return [{"role": "system", "content": _system(GROUP_SYSTEM, schema)}, {"role": "user", "content": parts}]


def complaint(reason: str) -> str:
    return (f"Your previous reply could not be used: {reason}. Reply again with only the corrected JSON object "
            "that matches the schema from the system message — no prose, no code fences.")
