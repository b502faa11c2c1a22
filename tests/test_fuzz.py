"""Random sidecars, metadata and schema files into the validators: clear rejections, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encord_ingest.errors import ConfigError
from tasks.metadata import MetadataError, parse_sidecar
from tasks.schema import load_schema, parse_schema
from tasks.validate import validate_metadata

SCHEMA = parse_schema(
    {
        "keys": {
            "site": {"type": "enum", "values": ["north", "south"]},
            "at": "datetime",
            "n": "number",
            "ok": "boolean",
            "id": "uuid",
            "s": "varchar",
            "e": {"type": "embedding", "size": 3},
        }
    }
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
keys = st.one_of(st.sampled_from(["site", "at", "n", "ok", "id", "s", "e"]), st.text(max_size=12))


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_a_sidecar(raw: bytes) -> None:
    try:
        value = parse_sidecar(raw)
    except MetadataError as exc:
        assert exc.rule.startswith("sidecar.") and exc.message
        return
    assert isinstance(value, dict)


@settings(max_examples=400, deadline=None)
@given(metadata=st.dictionaries(keys, json_values, max_size=6))
def test_random_metadata_is_coerced_or_refused_with_a_rule(metadata: dict) -> None:
    out, violation = validate_metadata(metadata, SCHEMA)
    if violation is not None:
        assert out == {} and violation.rule and violation.reason
        assert "\n" not in violation.reason
        return
    json.dumps(out, allow_nan=False)  # what is accepted is valid JSON for jsonb
    assert set(out) == set(metadata)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_random_json_text_as_a_sidecar(text: str) -> None:
    try:
        value = parse_sidecar(text.encode("utf-8", "surrogatepass"))
    except MetadataError:
        return
    out, violation = validate_metadata(value, SCHEMA)
    assert (violation is None) == (out == value or set(out) == set(value))


schema_values = st.one_of(
    st.sampled_from(["number", "text", "varchar", "string", "long_string", "bogus", "enum", "embedding"]),
    st.dictionaries(
        st.sampled_from(["type", "values", "size", "other"]),
        st.one_of(st.text(max_size=6), st.integers(-5, 5000), st.lists(st.text(max_size=4), max_size=3)),
        max_size=3,
    ),
    st.integers(),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=10), schema_values, max_size=5), wrap=st.booleans())
def test_random_schema_files(data: dict, wrap: bool, tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump({"keys": data} if wrap else data))
    try:
        schema = load_schema(path)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert set(schema.keys) == set(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120))
def test_random_text_as_a_schema_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_schema(path)
    except ConfigError as exc:
        assert str(exc)
