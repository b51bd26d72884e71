"""OpenAPI for endpoints that take either JSON or multipart on one path.

FastAPI documents one body type per route; these endpoints read the body
themselves and describe both content types here, with examples. The form fields
are derived from the same Pydantic model that validates them (`app.api.deps.form_flags`),
so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.schemas.common import RunFlags

_COMPONENTS: dict[str, type[BaseModel]] = {}


def component_ref(model: type[BaseModel]) -> dict[str, str]:
    """A $ref to `model`, whose schema is then added to the document's components."""
    _COMPONENTS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def form_properties(model: type[BaseModel], names: list[str] | None = None) -> dict[str, Any]:
    """The multipart form fields of `model` (all, or `names`), with the same constraints as its JSON schema.

    A form field cannot be null, so a nullable field is documented by its non-null type (leaving it
    out is how a form says "none")."""
    props = model.model_json_schema()["properties"]
    out: dict[str, Any] = {}
    for name in names if names is not None else list(props):
        prop = dict(props[name])
        variants = prop.pop("anyOf", None)
        if variants:
            prop.update(next(v for v in variants if v.get("type") != "null"))
        if prop.get("default", 0) is None:
            del prop["default"]
        prop.pop("title", None)
        out[name] = prop
    return out


def body_json_or_form(json_model: type[BaseModel], *, multiple_files: bool, form_model: type[BaseModel] | None = RunFlags,
                      form_fields: list[str] | None = None) -> dict[str, Any]:
    """Both bodies of an endpoint: JSON (`json_model`) or multipart (`file` parts, `image_id`, and the fields
    of `form_model`). Unknown form fields are refused, as unknown JSON fields are."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    form_props: dict[str, Any] = {
        "file": {"type": "array", "items": file_schema, "description": "One `file` part per image."} if multiple_files
        else {**file_schema, "description": "The image file."},
        "image_id": ({"type": "array", "items": {"type": "string", "maxLength": 256},
                      "description": "Optional ids, one per file, in the same order (default: the file name)."}
                     if multiple_files else {"type": "string", "maxLength": 256,
                                             "description": "Optional id (default: the file name)."}),
    }
    required = ["file"]
    if form_model is not None:
        form_props.update(form_properties(form_model, form_fields))
        required += [n for n, f in form_model.model_fields.items() if f.is_required() and n in form_props]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": component_ref(json_model)},
                "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": form_props,
                                                   "additionalProperties": False}},
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
