"""OpenAPI for endpoints that take either JSON or multipart on one path.

FastAPI documents one body type per route; these endpoints read the body
themselves and describe both content types here, with examples.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.schemas.common import RunFlags

_COMPONENTS: dict[str, type[BaseModel]] = {}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    _COMPONENTS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def flag_properties() -> dict[str, Any]:
    props = {}
    for name, field in RunFlags.model_fields.items():
        props[name] = {"type": "boolean", "default": field.default, "description": field.description}
    return props


def body_json_or_form(json_model: type[BaseModel], *, multiple_files: bool, extra_form: dict[str, Any] | None = None,
                      flags: bool = True) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    form_props: dict[str, Any] = {
        "file": {"type": "array", "items": file_schema, "description": "One `file` part per image."} if multiple_files
        else {**file_schema, "description": "The image file."},
        "image_id": ({"type": "array", "items": {"type": "string"},
                      "description": "Optional ids, one per file, in the same order (default: the file name)."}
                     if multiple_files else {"type": "string", "description": "Optional id (default: the file name)."}),
    }
    if flags:
        form_props.update(flag_properties())
    form_props.update(extra_form or {})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref(json_model)},
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": form_props}},
            },
        }
    }


def add_component_schemas(schema: dict[str, Any]) -> None:
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _COMPONENTS.items():
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, def_schema in js.pop("$defs", {}).items():
            comps.setdefault(def_name, def_schema)
        comps.setdefault(name, js)
