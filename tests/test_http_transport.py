"""The direct OpenAI-compatible transport against a real loopback HTTP server.

The server is an aiohttp.web app bound to 127.0.0.1 on a free port, scripted per test with the
answers it gives (status, headers, body, delay); it records every request it saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from loop_testkit import Sleeps
from loopwright.loops.errors import ModelCallError, UserError
from loopwright.loops.models import http_transport
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig, check_model, uses_http
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

MSG = [{"role": "user", "content": "what is 7 * 8"}]


def completion(*texts: str, usage: tuple[int, int] | None = (11, 6), **choice: Any) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            | choice
            for i, t in enumerate(texts)
        ],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return body


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None


class Server:
    """Answers POST /v1/chat/completions from a script; the last reply repeats."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.base_url = ""
        self.in_flight = 0
        self.peak = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight -= 1
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield srv
    finally:
        await http_transport.close_session()
        await runner.cleanup()


def _client(
    srv: Server, writer: TraceWriter | None = None, sleep: Sleeps | None = None, **cfg: Any
) -> ModelClient:
    cfg.setdefault("model", "hosted_vllm/mock-7b")
    return ModelClient(
        ClientConfig(api_base=srv.base_url, **cfg), writer=writer, sleep=sleep or Sleeps()
    )


# -- which path ----------------------------------------------------------------------------


def test_auto_uses_http_only_for_openai_compatible_models_with_an_endpoint() -> None:
    assert uses_http("hosted_vllm/q", "http://127.0.0.1:8000/v1", "auto")
    assert uses_http("openai/q", "http://127.0.0.1:8000/v1", "auto")
    assert not uses_http("openai/gpt-4o-mini", None, "auto")  # api.openai.com: litellm prices it
    assert not uses_http("anthropic/claude-3-5-haiku-latest", "http://x/v1", "auto")
    assert not uses_http("local/smollm2-135m", None, "auto")
    assert not uses_http("hosted_vllm/q", "http://127.0.0.1:8000/v1", "litellm")


def test_transport_http_on_a_model_it_cannot_serve_is_one_clear_line() -> None:
    with pytest.raises(UserError) as err:
        check_model("local/smollm2-135m", None, "http")
    msg = str(err.value)
    assert "\n" not in msg and "--transport http" in msg and "--api-base" in msg


# -- requests and answers ------------------------------------------------------------------


async def test_request_body_and_parsed_samples(
    server: Server, store: TraceStore, writer: TraceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "sk-test-secret-123")
    server.script = [Reply(body=completion("fifty-six", "56", usage=(11, 7)))]
    client = _client(server, writer)

    samples = await client.sample(MSG, n=2, temperature=0.3, max_tokens=64, seed=5, stop=["\n\n"])

    [req] = server.requests
    assert req == {
        "model": "mock-7b",
        "messages": MSG,
        "temperature": 0.3,
        "max_tokens": 64,
        "seed": 5,
        "stop": ["\n\n"],
        "n": 2,
    }
    assert server.headers[0]["Authorization"] == "Bearer sk-test-secret-123"
    assert [s.text for s in samples] == ["fifty-six", "56"]
    assert [s.completion_tokens for s in samples] == [4, 3]  # 7 split over 2 choices
    assert [s.prompt_tokens for s in samples] == [11, 0]  # counted once per request
    assert all(s.cost_usd == 0.0 and s.finish_reason == "stop" for s in samples)
    writer.flush()
    rows = store.query("SELECT * FROM calls ORDER BY sample_index")
    assert [r["output"] for r in rows] == ["fifty-six", "56"]
    assert all(r["attempts"] == 1 and r["n"] == 2 for r in rows)
    dump = json.dumps(store.query("SELECT * FROM calls"), default=str)
    assert "sk-test-secret-123" not in dump


async def test_no_key_no_authorization_header(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOSTED_VLLM_API_KEY", raising=False)
    server.script = [Reply(body=completion("ok"))]
    await _client(server).sample(MSG)
    assert "Authorization" not in server.headers[0]


async def test_logprobs_become_the_mean_token_logprob(server: Server) -> None:
    lp = {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}
    server.script = [Reply(body=completion("ab", logprobs=lp))]
    [s] = await _client(server).sample(MSG)
    assert s.logprob_mean == pytest.approx(-1.0)


async def test_an_openai_model_behind_an_endpoint_is_priced_from_litellms_table(
    server: Server,
) -> None:
    server.script = [Reply(body=completion("ok", usage=(1000, 1000)))]
    [s] = await _client(server, model="openai/gpt-4o-mini").sample(MSG)
    # gpt-4o-mini's row of the table litellm ships: $0.15 / $0.60 per million tokens
    assert s.cost_usd == pytest.approx(1000 * 0.15e-6 + 1000 * 0.6e-6)
    [free] = await _client(server).sample(MSG)  # hosted_vllm/: self-hosted, costs nothing
    assert free.cost_usd == 0.0


async def test_the_litellm_transport_reaches_the_same_server(server: Server) -> None:
    """--transport litellm sends the same request through litellm (LiteLLMModel)."""
    server.script = [Reply(body=completion("fifty-six", "56", usage=(11, 7)))]
    client = _client(server, transport="litellm")
    assert type(client.backend).__name__ == "LiteLLMModel"
    samples = await client.sample(MSG, n=2, temperature=0.3, max_tokens=64, seed=5)
    [req] = server.requests
    assert (req["model"], req["messages"], req["n"], req["seed"]) == ("mock-7b", MSG, 2, 5)
    assert [s.text for s in samples] == ["fifty-six", "56"]
    assert [s.prompt_tokens for s in samples] == [11, 0]
    assert sum(s.completion_tokens for s in samples) == 7


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"}),
        Reply(status=503, body={"error": {"message": "overloaded"}}),
        Reply(status=200, raw=b"<html>gateway</html>"),
        Reply(status=200, body={"choices": []}),
        Reply(status=200, body={"choices": [{"message": {"content": None}}]}),
    ],
    ids=["429", "503", "not-json", "no-choices", "no-content"],
)
async def test_transient_failures_are_retried(
    bad: Reply, server: Server, store: TraceStore, writer: TraceWriter
) -> None:
    server.script = [bad, bad, Reply(body=completion("56"))]
    [s] = await _client(server, writer).sample(MSG)
    assert s.text == "56"
    assert len(server.requests) == 3
    writer.flush()
    [row] = store.query("SELECT attempts, error FROM calls")
    assert row == {"attempts": 3, "error": None}


async def test_retry_after_is_honoured(server: Server) -> None:
    server.script = [
        Reply(status=429, body={"error": "busy"}, headers={"Retry-After": "0.4"}),
        Reply(status=503, body={"error": "busy"}),
        Reply(body=completion("56")),
    ]
    sleeps = Sleeps()
    [s] = await _client(server, sleep=sleeps, backoff_base_s=8.0).sample(MSG)
    assert s.text == "56"
    assert sleeps.delays[0] == 0.4  # the server's wait
    assert 8.0 <= sleeps.delays[1] <= 16.0  # no hint: base * 2, jittered down to half


async def test_a_bad_request_is_not_retried(
    server: Server, store: TraceStore, writer: TraceWriter
) -> None:
    server.script = [Reply(status=400, body={"error": {"message": "max_tokens too large"}})]
    with pytest.raises(ModelCallError) as err:
        await _client(server, writer).sample(MSG)
    assert len(server.requests) == 1
    assert "400" in str(err.value) and "max_tokens too large" in str(err.value)
    writer.flush()
    [row] = store.query("SELECT attempts, error FROM calls")
    assert row["attempts"] == 1 and "max_tokens too large" in row["error"]


async def test_a_rejected_key_is_a_user_error(server: Server) -> None:
    server.script = [Reply(status=401, body={"error": {"message": "invalid api key"}})]
    with pytest.raises(UserError, match="rejected the API key"):
        await _client(server).sample(MSG)
    assert len(server.requests) == 1


async def test_timeouts_are_retried_then_fail_with_the_attempt_count(server: Server) -> None:
    server.script = [Reply(body=completion("late"), delay=2.0)]
    with pytest.raises(ModelCallError) as err:
        await _client(server, timeout_s=0.2, max_attempts=2).sample(MSG)
    assert len(server.requests) == 2
    assert "after 2 attempt(s)" in str(err.value)


async def test_an_unreachable_endpoint_fails_after_retries() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ModelClient(
        ClientConfig(model="hosted_vllm/x", api_base=f"http://127.0.0.1:{port}/v1", max_attempts=3),
        sleep=Sleeps(),
    )
    with pytest.raises(ModelCallError, match=r"EndpointConnectionError.*after 3 attempt"):
        await client.sample(MSG)
    await client.aclose()


async def test_a_server_that_ignores_n_is_fanned_out(server: Server) -> None:
    server.script = [Reply(body=completion("only one"))]
    client = _client(server)
    samples = await client.sample(MSG, n=3, seed=10)
    assert [s.sample_index for s in samples] == [0, 1, 2]
    # one n=3 request that came back with one choice, then three n=1 requests, seeds derived
    assert [r.get("n") for r in server.requests] == [3, None, None, None]
    assert sorted(r["seed"] for r in server.requests[1:]) == [10, 11, 12]
    assert client.n_supported is False
    await client.sample(MSG, n=2, seed=0)
    assert [r.get("n") for r in server.requests[4:]] == [None, None]


# -- sessions and whole runs ---------------------------------------------------------------


async def test_close_session_is_idempotent_and_a_new_one_follows(server: Server) -> None:
    server.script = [Reply(body=completion("ok"))]
    client = _client(server)
    await client.sample(MSG)
    first = http_transport.session()
    await client.aclose()
    await client.aclose()
    assert first.closed
    await client.sample(MSG)
    assert http_transport.session() is not first


def test_a_session_nobody_closed_is_closed_when_the_loop_shuts_down() -> None:
    seen: list[Any] = []

    async def main() -> None:
        seen.append(http_transport.session())
        await asyncio.sleep(0)

    asyncio.run(main())
    assert seen[0].closed
    assert not http_transport._sessions


async def _best_of_one(
    server: Server, tmp_path: Path, rows: list[tuple[str, str]], concurrency: int
) -> tuple[Any, Any]:
    """A real best-of-n (n=1) run of math tasks (prompt, reference) against ``server``."""
    from loopwright.loops.execution.runner import RunConfig, run

    tasks = tmp_path / "tasks.jsonl"
    with tasks.open("w") as fh:
        for i, (prompt, reference) in enumerate(rows):
            row = {"id": f"t{i}", "prompt": prompt, "kind": "math", "reference": reference}
            fh.write(json.dumps(row) + "\n")
    cfg = RunConfig(
        loop="best-of-n", options={"n": 1}, model="hosted_vllm/mock-7b", api_base=server.base_url,
        tasks=str(tasks), db=str(tmp_path / "t.duckdb"), concurrency=concurrency, cache=False,
        verifier="none",  # transport behaviour: one request per task
    )  # fmt: skip
    return cfg, await run(cfg)


async def test_a_run_against_an_openai_compatible_server(server: Server, tmp_path: Path) -> None:
    server.script = [Reply(body=completion("The answer is 4."))]
    rows = [(f"{i} + 2 = ?", str(i + 2)) for i in range(6)]
    cfg, result = await _best_of_one(server, tmp_path, rows, concurrency=3)

    assert result.progress.done == 6
    assert result.progress.passed == 1  # only 2 + 2 = 4
    assert len(server.requests) == 6
    assert not http_transport._sessions  # the run closed its session
    with TraceStore(cfg.db, read_only=True) as s:
        [row] = s.query("SELECT count(*) AS n, sum(prompt_tokens) AS p FROM calls")
    assert row == {"n": 6, "p": 66}


async def test_a_run_keeps_exactly_concurrency_requests_in_flight(
    server: Server, tmp_path: Path
) -> None:
    """Tasks get slack beyond --concurrency (runner.task_slots); requests never do."""
    from loopwright.loops.execution.scope import task_slots

    assert [task_slots(c) for c in (1, 3, 4, 8, 64)] == [1, 3, 5, 10, 80]
    server.script = [Reply(body=completion("The answer is 4."), delay=0.15)]
    _, result = await _best_of_one(server, tmp_path, [("2 + 2 = ?", "4")] * 24, concurrency=8)

    assert result.progress.passed == 24
    assert server.peak == 8
