"""What a step's cache entry may hold before anything reads it back.

A cache entry is Prefect's persisted result: ``keys/<key>`` (a record naming its result's
``storage_key`` and the serializer that wrote it) and ``results/<storage_key>``. Prefect reads
a result with whatever serializer its record names, pickle included, and its JSON decoder
imports the class that an ``{"__class__": …}`` object names: an entry is code as much as data.
Every compute step writes plain JSON (``tasks/steps.py``), so an entry is accepted only in
exactly that form: entries that arrive from elsewhere (a shared store, written by any worker
that can write the bucket) and entries read without Prefect (replay) are checked here.
"""

from __future__ import annotations

import re

#: the serializer record Prefect writes for ``result_serializer="json"``: its defaults, nothing added
PLAIN_JSON_SERIALIZER = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}
_BARE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def holds_an_encoded_object(value: object) -> bool:
    """Whether Prefect's JSON decoder would turn part of it into an object (``{"__class__": …}``)."""
    if isinstance(value, dict):
        return "__class__" in value or any(holds_an_encoded_object(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_an_encoded_object(v) for v in value)
    return False


def plain_name(storage_key: str) -> bool:
    """A result's name that stays in the entry's ``results/`` folder (no path, no ``..``)."""
    return _BARE_NAME.fullmatch(storage_key) is not None


def plain_json_entry(record: object, result: object) -> bool:
    """``record`` (a parsed key record) and ``result`` (its parsed result) are a step's own kind of
    entry: the default JSON serializer, no expiry, a result in the entry's own folder that is a
    JSON object holding no encoded object."""
    return (
        isinstance(record, dict)
        and record.get("serializer") == PLAIN_JSON_SERIALIZER
        and record.get("expiration") is None
        and isinstance(record.get("storage_key"), str)
        and plain_name(record["storage_key"])
        and isinstance(result, dict)
        and not holds_an_encoded_object(result)
    )
