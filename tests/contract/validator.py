"""The official AsyncAPI document as JSON Schemas, and a validator for single messages.

The document (``elevenlabs-agents.asyncapi.yaml`` beside this file, see
README.md) is AsyncAPI 2.6: its schemas are JSON Schema with OpenAPI's
``nullable``. :func:`translate` turns them into plain JSON Schema 2020-12:

- ``$ref: "#/components/schemas/X"`` → ``#/$defs/X``;
- ``nullable: true`` → the type plus ``"null"`` (a ``$ref`` or combinator
  that is nullable becomes ``anyOf: [it, {"type": "null"}]``);
- ``allOf`` whose parts are objects is merged into one object (properties
  and ``required`` united; ``additionalProperties: false`` applies to the
  union). The document's ``MCPToolCall*`` schemas put
  ``additionalProperties: false`` in every part, which read literally
  admits no message at all; merged, they say what the document means.

:class:`Contract` then picks the schema by direction and ``type``
(``user_audio_chunk`` for the untyped audio message) and lists what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DOCUMENT = Path(__file__).with_name("elevenlabs-agents.asyncapi.yaml")
TO_AGENT = "to_agent"  # client → server (the device sends)
FROM_AGENT = "from_agent"  # server → client (the emulator sends)
AUDIO_CHUNK = "user_audio_chunk"  # the one message without a type field
_REF_PREFIX = "#/components/schemas/"


class ContractDocumentError(Exception):
    """The document does not have the shape this module expects."""


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: PyYAML's 1.1 rules read the Language enum's ``no`` (Norwegian) as false."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_document(path: Path = DOCUMENT) -> dict[str, Any]:
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)  # a SafeLoader subclass
    if not isinstance(doc, dict):
        raise ContractDocumentError(f"{path} is not a YAML mapping")
    return doc


def translate(node: Any, schemas: Mapping[str, Any]) -> Any:
    """One AsyncAPI schema (and everything under it) as JSON Schema 2020-12."""
    if isinstance(node, list):
        return [translate(n, schemas) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    nullable = node.pop("nullable", False) is True
    if "allOf" in node and all(_is_object(_resolve(p, schemas)) for p in node["allOf"]):
        parts = [_resolve(p, schemas) for p in node.pop("allOf")]
        node = {**_merge_objects(parts), **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            if not isinstance(value, str) or not value.startswith(_REF_PREFIX):
                raise ContractDocumentError(f"unexpected $ref {value!r}")
            out[key] = "#/$defs/" + value[len(_REF_PREFIX) :]
        elif key in ("properties", "$defs", "patternProperties"):
            out[key] = {k: translate(v, schemas) for k, v in value.items()}
        else:
            out[key] = translate(value, schemas)
    if not nullable:
        return out
    if isinstance(out.get("type"), str) and not any(k in out for k in ("$ref", "oneOf", "anyOf", "allOf")):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    keep = {k: out.pop(k) for k in ("description", "default") if k in out}
    return {"anyOf": [out, {"type": "null"}], **keep}


def _resolve(node: Any, schemas: Mapping[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node and str(node["$ref"]).startswith(_REF_PREFIX):
        node = schemas[node["$ref"][len(_REF_PREFIX) :]]
    return node


def _is_object(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "object"


def _merge_objects(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
    closed = False
    for part in parts:
        merged["properties"].update(copy.deepcopy(part.get("properties", {})))
        merged["required"] += [r for r in part.get("required", []) if r not in merged["required"]]
        closed = closed or part.get("additionalProperties") is False
    if closed:
        merged["additionalProperties"] = False
    return merged


def _base64(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("base64")(_base64)
    checker.checks("date-time")(_date_time)
    return checker


class Contract:
    """The document's messages, by direction and type: ``problems(direction, message)``."""

    def __init__(self, path: Path = DOCUMENT) -> None:
        doc = load_document(path)
        self.version = str(doc.get("asyncapi"))
        self.servers: dict[str, str] = {name: s["url"] for name, s in doc.get("servers", {}).items()}
        components = doc["components"]
        schemas = components["schemas"]
        self._defs = {name: translate(s, schemas) for name, s in schemas.items()}
        channel = doc["channels"]["AgentMessages"]
        # The document's own comments: publish = server → client, subscribe = client → server.
        self.schemas: dict[str, dict[str, str]] = {
            FROM_AGENT: self._by_type(channel["publish"], components["messages"], schemas),
            TO_AGENT: self._by_type(channel["subscribe"], components["messages"], schemas),
        }
        if "audio" not in self.schemas[FROM_AGENT] or AUDIO_CHUNK not in self.schemas[TO_AGENT]:
            raise ContractDocumentError("publish/subscribe are not server→client/client→server as expected")
        self._checker = _format_checker()
        self._validators: dict[tuple[str, str], Any] = {}

    @staticmethod
    def _by_type(
        operation: Mapping[str, Any], messages: Mapping[str, Any], schemas: Mapping[str, Any]
    ) -> dict[str, str]:
        """type → payload schema name."""
        out: dict[str, str] = {}
        for ref in operation["message"]["oneOf"]:
            message = messages[ref["$ref"].rsplit("/", 1)[1]]
            name = message["payload"]["$ref"][len(_REF_PREFIX) :]
            props = schemas[name].get("properties", {})
            type_ = props.get("type", {}).get("const")
            if type_ is None:
                if AUDIO_CHUNK not in props:
                    raise ContractDocumentError(f"message {name} has neither a type const nor {AUDIO_CHUNK}")
                type_ = AUDIO_CHUNK
            out[type_] = name
        return out

    def types(self, direction: str) -> list[str]:
        return sorted(self.schemas[direction])

    def validator(self, direction: str, type_: str) -> Any:
        """The compiled validator of one message (built on first use, kept)."""
        key = (direction, type_)
        found = self._validators.get(key)
        if found is None:
            schema = {"$defs": self._defs, "$ref": f"#/$defs/{self.schemas[direction][type_]}"}
            found = jsonschema.Draft202012Validator(schema, format_checker=self._checker)
            self._validators[key] = found
        return found

    def message_type(self, direction: str, message: Mapping[str, Any]) -> str | None:
        if direction == TO_AGENT and "type" not in message and AUDIO_CHUNK in message:
            return AUDIO_CHUNK
        t = message.get("type")
        return t if isinstance(t, str) else None

    def problems(self, direction: str, message: Any) -> list[str]:
        """What is wrong with ``message`` sent in ``direction`` (empty: it conforms)."""
        if direction not in self.schemas:
            raise ValueError(f"direction must be {TO_AGENT!r} or {FROM_AGENT!r}, not {direction!r}")
        if not isinstance(message, Mapping):
            return [f"a JSON {type(message).__name__}, not an object"]
        type_ = self.message_type(direction, message)
        if type_ is None or type_ not in self.schemas[direction]:
            side = "client → server" if direction == TO_AGENT else "server → client"
            return [f"type {type_!r} is not a {side} message of the document"]
        errors = sorted(self.validator(direction, type_).iter_errors(message), key=lambda e: list(e.path))
        return [f"{type_}: {'/'.join(map(str, e.path)) or '(message)'}: {e.message}" for e in errors]


@functools.lru_cache(maxsize=1)
def contract() -> Contract:
    """The vendored document, loaded once."""
    return Contract()
