"""Every route of the live API fuzzed from its own OpenAPI document (schemathesis).

The document is loaded from the running PoP (``GET /v1/openapi.json``, as any client
would); for each operation, schemathesis draws requests that fit its schemas (positive)
and, where there are parameters or a body to break, requests that do not (negative),
sends them with an admin token over the self-signed TLS of 127.0.0.1 (verification off
in this test only), and checks every answer: never a 5xx, never a 401 when the token
went out (negative cases may leave it out), the status and the Content-Type documented,
the body valid against the answer's schema, the documented headers present. Bounded
and deterministic: a fixed number of examples per operation, derandomized, no
shrinking, no example database.

    schemathesis --requests--> master (enrollment + API, tests/unit/test_api.py's lab)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api import ApiLab, open_api_lab

from naas.pop.api import ROUTES
from naas.pop.api_schema import Route
from naas.pop.limits import EnrollmentLimits

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # 127.0.0.1
EXAMPLES = 20  # per operation and mode: 19 operations, about 25 s on 2 slow cores
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiLab]:
    no_limit = EnrollmentLimits(failure_burst=1_000_000)  # negative cases without a token: 401s
    with open_api_lab(Path(tmp_path_factory.mktemp("fuzz")), no_limit) as lab:
        lab.enroll("web")  # a member to regroup and revoke, a used invitation to list
        yield lab


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:  # one connection, kept alive, for all the requests
        opened.verify = False
        yield opened


@pytest.fixture(scope="module")
def schema(live: ApiLab) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}/v1/openapi.json", verify=False, timeout=10)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.operation)
def test_every_answer_is_documented_and_none_is_a_server_error(
    live: ApiLab, schema: schemathesis.BaseSchema, session: requests.Session, route: Route
) -> None:
    operation = schema.find_operation_by_id(route.operation)
    modes = [GenerationMode.POSITIVE]
    if operation.path_parameters or operation.body:
        modes.append(GenerationMode.NEGATIVE)
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
    headers = {"Authorization": f"Bearer {live.admin}"}

    @settings(
        max_examples=EXAMPLES * len(modes),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=live.url, session=session, headers=headers, verify=False, timeout=10)
        sent = response.request.headers.get("Authorization")
        assert response.status_code != 401 or sent != headers["Authorization"], response.text
        case.validate_response(response, checks=CHECKS, headers=headers, transport_kwargs={"verify": False})

    fuzz()
