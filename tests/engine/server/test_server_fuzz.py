"""Schemathesis against the served OpenAPI schema: valid and invalid bodies for every
operation (bounded, derandomized examples, so every run replays the same cases).

The cases are generated from the app's schema built in this process (the same code
serves /openapi.json; the first test checks they are equal) and sent to the real
server process.

Checked: no 5xx answer, every status code documented for its operation, the content
type and the body valid against the schema (the error object included).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.server.app import create_app
from engine.server.config import ServerConfig

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


SCHEMA = create_app(ServerConfig(model="unused")).openapi()
schema = schemathesis.openapi.from_dict(SCHEMA)


def test_the_served_schema_is_the_one_fuzzed(server):
    assert server.get("/openapi.json").json() == SCHEMA


@schema.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_every_operation_answers_within_its_schema(case, server):
    case.call_and_validate(base_url=server.url, headers=server.headers, checks=CHECKS)
