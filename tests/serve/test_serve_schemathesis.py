"""Property-based run of schemathesis against the decision API's OpenAPI document: valid and
invalid requests, no 500s, every response documented and matching its schema, the API key
enforced (schemathesis's default checks)."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import API_KEY
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from journey_pipeline.serve.app import create_app
from journey_pipeline.serve.core import DecisionService, ServiceConfig

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
RUNS = [
    ("/v1/decisions", "POST", POSITIVE),
    ("/v1/decisions", "POST", NEGATIVE),
    ("/healthz", "GET", POSITIVE),
    ("/readyz", "GET", POSITIVE),
]


@pytest.fixture
def api_schema(served_home):
    service = DecisionService(served_home.settings, ServiceConfig()).start(background=False)
    app = create_app(served_home.settings, service, api_keys={API_KEY})
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.batcher.stop()
    service.close()


@pytest.mark.parametrize(("path", "method", "mode"), RUNS)
def test_api_conforms_to_its_openapi_document(api_schema, path, method, mode):
    operation = api_schema[path][method]
    examples = 40 if path == "/v1/decisions" else 5
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text

    check()
    assert statuses
    if path == "/v1/decisions":
        expected = {200} if mode is POSITIVE else {400, 413, 415, 422}
        assert set(statuses) & expected, statuses
