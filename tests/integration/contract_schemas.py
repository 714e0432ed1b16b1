"""The machine-readable contract (docs/asyncapi.yaml, docs/schemas/*.json), loaded for tests.

Every schema file and the AsyncAPI document are registered under their file
URIs, so that a `$ref` resolves exactly as an AsyncAPI tool resolves it:
relative to the file that holds it. A captured AMQP message is checked against
one message of the AsyncAPI document: its body against `payload`, its headers
table against `headers`, its basic properties against `x-amqp-properties`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pika
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"
ASYNCAPI = DOCS / "asyncapi.yaml"
CONTRACT = DOCS / "contract.md"
PARSER_DIR = ROOT / "tests" / "asyncapi"

# The basic properties of AMQP 0-9-1 by the names pika (and the contract) use.
BASIC_PROPERTIES = (
    "content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
    "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
    "cluster_id",
)


@dataclass(frozen=True)
class Captured:
    """One AMQP message as a consumer received it."""

    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, properties: pika.BasicProperties, body: bytes) -> Captured:
        basic = {name: getattr(properties, name) for name in BASIC_PROPERTIES
                 if getattr(properties, name) is not None}
        return cls(body, basic, dict(properties.headers or {}))

    def json(self) -> Any:
        return json.loads(self.body)


def load_asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(document, dict)
    return document


def schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("*.json"))


@cache
def registry() -> Registry[Any]:
    resources: list[tuple[str, Resource[Any]]] = [
        (path.as_uri(), Resource.from_contents(json.loads(path.read_text())))
        for path in schema_files()
    ]
    resources.append((ASYNCAPI.as_uri(), DRAFT202012.create_resource(load_asyncapi())))
    return Registry().with_resources(resources)


def validator(uri: str) -> Draft202012Validator:
    """A validator for the schema at uri (a file URI, with a JSON pointer fragment or not)."""
    return Draft202012Validator(
        {"$ref": uri}, registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def schema_uri(name: str, pointer: str = "") -> str:
    """The URI of docs/schemas/<name>, or of a part of it."""
    return (SCHEMAS / name).as_uri() + (f"#{pointer}" if pointer else "")


def asyncapi_uri(pointer: str) -> str:
    return f"{ASYNCAPI.as_uri()}#{pointer}"


def errors(uri: str, instance: Any) -> list[str]:
    """Why instance does not match the schema at uri, one line per error; [] when it does."""
    return [_explain(error) for error in validator(uri).iter_errors(instance)]


def _explain(error: Any) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "(top)"
    text = f"{where}: {error.message}"
    for sub in error.context or ():  # oneOf/anyOf: say why each branch failed
        sub_where = "/".join(str(part) for part in sub.absolute_path) or "(top)"
        text += f"\n    branch {list(sub.schema_path)[:1]}: {sub_where}: {sub.message}"
    return text


def assert_valid(uri: str, instance: Any, what: str = "") -> None:
    found = errors(uri, instance)
    assert not found, (
        f"{what or uri} does not match {uri.rsplit('/', 1)[-1]}:\n  "
        + "\n  ".join(found) + f"\ninstance: {json.dumps(instance, default=str)[:2000]}"
    )


def message_pointer(name: str) -> str:
    return f"/components/messages/{name}"


def assert_message(name: str, message: Captured, *, json_body: bool = True) -> None:
    """message matches components.messages.<name> of the AsyncAPI document in every part."""
    definition = load_asyncapi()["components"]["messages"][name]
    pointer = message_pointer(name)
    label = f"a real {name} message"
    if json_body:
        assert_valid(asyncapi_uri(f"{pointer}/payload"), message.json(), f"{label}'s body")
    if "headers" in definition:
        assert_valid(asyncapi_uri(f"{pointer}/headers"), message.headers, f"{label}'s headers")
    else:
        assert message.headers == {}, f"{label} has headers the contract does not describe"
    assert_valid(asyncapi_uri(f"{pointer}/x-amqp-properties"), message.properties,
                 f"{label}'s properties")
    content_type = definition.get("contentType", load_asyncapi().get("defaultContentType"))
    if json_body and content_type:
        assert message.properties.get("content_type") == content_type, label


def event_message_name(event_type: str) -> str:
    """The AsyncAPI message whose AMQP messageType is event_type."""
    for name, definition in load_asyncapi()["components"]["messages"].items():
        if definition.get("bindings", {}).get("amqp", {}).get("messageType") == event_type:
            return str(name)
    raise AssertionError(f"docs/asyncapi.yaml has no message of type {event_type!r}")


def refs(value: Any) -> Iterator[str]:
    """Every $ref in a JSON/YAML document."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref" and isinstance(child, str):
                yield child
            else:
                yield from refs(child)
    elif isinstance(value, list):
        for child in value:
            yield from refs(child)


def run_official_parser() -> subprocess.CompletedProcess[str]:
    """docs/asyncapi.yaml through the official AsyncAPI parser (tests/asyncapi/validate.cjs)."""
    node = shutil.which("node")
    installed = PARSER_DIR / "node_modules" / "@asyncapi" / "parser"
    how = (f"install it with `npm ci --ignore-scripts --prefix {PARSER_DIR.relative_to(ROOT)}` "
           "(Node.js 18+ and npm; `bash .ci/run` does it)")
    assert node is not None, f"node is not on PATH: the AsyncAPI parser needs Node.js; {how}"
    assert installed.is_dir(), f"the official AsyncAPI parser is not installed: {how}"
    return subprocess.run([node, str(PARSER_DIR / "validate.cjs"), str(ASYNCAPI)], check=False,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
