"""The config's JSON Schema (for editors and ``schema``), generated from the models."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from daemon.config.describe import format_duration
from daemon.config.secrets import SECRET_PLACES
from daemon.core.policy import Loc, Settings


class _SchemaGenerator(GenerateJsonSchema):
    """Defaults written as the config writes them (``30s``, not ISO 8601's ``PT30S``)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def settings_json_schema() -> dict[str, Any]:
    """The JSON Schema of the main config file, with every field's description, as an editor
    sees the file: before ``${NAME}`` references are read and ``defaults`` merged."""
    schema = Settings.model_json_schema(schema_generator=_SchemaGenerator)
    _as_written(schema["$defs"])
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://cbr-replicator.invalid/config.schema.json",
        **schema,
        "title": "cbr-replicator configuration",
    }


def policies_file_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ``policies_dir`` file: a list of policies."""
    definitions = settings_json_schema()["$defs"]
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://cbr-replicator.invalid/policies.schema.json",
        "title": "cbr-replicator policies file",
        "type": "array",
        "items": {"$ref": "#/$defs/Policy"},
        "$defs": definitions,
    }


def _as_written(definitions: dict[str, Any]) -> None:
    """What the models cannot say: ``X_file`` may stand for a secret ``X`` (one of the two),
    a policy's schedule may come from ``defaults``, and its rpo's default is derived."""
    models: dict[Loc, str] = {
        ("cloud", "credentials"): "CredentialsSettings",
        ("notify", "webhook"): "WebhookSettings",
    }
    for place, keys in SECRET_PLACES:
        definition = definitions[models[place]]
        required = definition.setdefault("required", [])
        choices: list[dict[str, Any]] = []
        for key in sorted(keys):
            definition["properties"][f"{key}_file"] = {
                "type": "string",
                "description": f"file holding {key} (e.g. a systemd credential); not with {key}",
            }
            if key in required:
                required.remove(key)
                choices.append({"oneOf": [{"required": [key]}, {"required": [f"{key}_file"]}]})
            else:
                choices.append({"not": {"required": [key, f"{key}_file"]}})
        definition["allOf"] = choices
        if not required:
            del definition["required"]
    policy = definitions["Policy"]
    policy["required"] = [name for name in policy["required"] if name != "schedule"]
    policy["properties"]["schedule"]["description"] += " (or defaults.schedule)"
    del policy["properties"]["rpo"]["default"]
