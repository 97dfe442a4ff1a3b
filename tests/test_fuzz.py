"""Property-based fuzzing of every documented route with schemathesis (hypothesis underneath).

The schema is the service's own OpenAPI document (``create_app(...).openapi()``, the same one
``/openapi.json`` serves); the calls go over a real socket to a dedicated ``python -m service``
subprocess. Property: whatever the generated request (valid or not), the answer is never a 5xx.
Examples per operation are limited so the whole file runs in well under a minute.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import REPO_ROOT
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.settings import Settings

MAX_EXAMPLES = 15

# The documented schema (building the app loads no model). Checked against the served one below.
SCHEMA = create_app(Settings(model_dir=REPO_ROOT / "models" / "default", _env_file=None)).openapi()
schema = schemathesis.openapi.from_dict(SCHEMA)


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    """A server of its own: fuzzed jobs and odd requests never disturb the other tests' server."""
    return server_factory(env={"DERMSERVE_MAX_IMAGES_PER_REQUEST": "4", "DERMSERVE_MAX_UPLOAD_BYTES": "200000"})


def test_served_schema_is_the_fuzzed_one(fuzz_server):
    served = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=30).json()
    assert served["paths"].keys() == SCHEMA["paths"].keys()
    assert len(SCHEMA["paths"]) >= 10


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_error_on_any_documented_route(case, fuzz_server):
    response = case.call(base_url=fuzz_server.base_url, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
