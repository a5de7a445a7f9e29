"""obs-llm --api: each LlmCall carries the model and token counts of its exchange, joined from
the same process's TLS plaintext; real clients against the provider wire-format server."""

from __future__ import annotations

import pytest

from tests.kernel.test_obs_ssl import COMM, run_client, server  # noqa: F401 (fixture)
from tests.support import provider_server as ps
from tests.support.tools import running

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def llm(server):  # noqa: F811
    with running("obs-llm", "--api", "--comm", COMM, "--heartbeat-interval", "1") as r:
        yield r
    assert r.status == 0, r.stderr()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
@pytest.mark.parametrize("client", ["curl", "python", "node"])
def test_llm_call_has_model_and_tokens(llm, server, client, api, stream):  # noqa: F811
    pid = run_client(client, server, api, stream, "gzip")
    [call] = llm.wait_events("LlmCall", lambda f: f["pid"] == pid)
    want = ps.EXPECTED[(api, stream)]
    got = {k: call[k] for k in ("model", "prompt_tokens", "completion_tokens",
                                "cache_read_tokens", "cache_creation_tokens")}
    assert got == want
    assert call["_env"]["provider"] == ps.PROVIDER_OF[api]
    assert call["sni"] == ps.HOST_OF[api]
    assert call["req_bytes"] > 0 and call["resp_bytes"] > 0
