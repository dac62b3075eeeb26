"""The fake upstream's OpenAI-format traps, checked on the raw HTTP it sends.

Azure's paths, keys and error envelope; OpenRouter's keep-alive comments and error
chunks; Groq's ``x_groq`` usage; Azure's content-filter chunks; the ``content_filter``
fault; recorded headers and models.  The adapters that must survive these are tested
elsewhere (``test_compat.py``); here plain ``httpx`` (and the official OpenAI SDK, for
fidelity) read what the server says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from providers import ConfigError
from providers.testing import FakeUpstream, Fault, Scenario, load_scenarios, open_fake_upstream

T = TypeVar("T")

OA_AUTH = {"authorization": "Bearer sk-test"}
AZ_KEY = {"api-key": "az-test-key"}
VERSION = "api-version=2024-10-21"


def chat(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


def payloads(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def chunks(body: str) -> list[dict[str, Any]]:
    """The decoded JSON chunks of an OpenAI-format stream (``[DONE]`` left out)."""
    return [json.loads(p) for p in payloads(body) if p != "[DONE]"]


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


# --------------------------------------------------------------------------- Azure


async def test_azure_dated_paths_record_the_deployment_as_the_model(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Chat and embeddings under /openai/deployments/{d}: the deployment is the model."""
    base = f"{upstream.url}/az/openai/deployments/my-gpt"
    r = await client.post(f"{base}/chat/completions?{VERSION}", headers=AZ_KEY, json=chat())
    assert r.status_code == 200
    assert r.json()["model"] == "my-gpt"
    assert r.json()["choices"][0]["message"]["content"] == "echo: hello big world"
    no_model = {"messages": [{"role": "user", "content": "x"}]}
    r = await client.post(f"{base}/chat/completions?{VERSION}", headers=AZ_KEY, json=no_model)
    assert r.status_code == 200  # the body's model is optional: the path names it
    r = await client.post(f"{base}/embeddings?{VERSION}", headers=AZ_KEY, json={"input": ["a"]})
    assert r.json()["model"] == "my-gpt"
    assert len(r.json()["data"][0]["embedding"]) == 8
    assert [(q.scenario, q.model, q.outcome) for q in upstream.requests] == [
        ("az", "my-gpt", "completed")
    ] * 3
    assert upstream.requests[0].headers["api-key"] == "az-test-key"


async def test_azure_needs_an_api_version_and_an_api_key(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """No api-version: 400; no api-key (a Bearer token is not enough here): 401; Azure's shape."""
    url = f"{upstream.url}/az/openai/deployments/d/chat/completions"
    r = await client.post(url, headers=AZ_KEY, json=chat())
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "code": "MissingApiVersionParameter",
            "message": "The api-version query parameter (?api-version=) is required for all "
            "requests.",
        }
    }
    for headers in ({}, OA_AUTH, {"api-key": ""}):
        r = await client.post(f"{url}?{VERSION}", headers=headers, json=chat())
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"code", "message"}
        assert r.json()["error"]["code"] == "401"
    r = await client.get(f"{upstream.url}/az/openai/models", headers=AZ_KEY)
    assert r.status_code == 400
    r = await client.get(f"{upstream.url}/az/openai/models?{VERSION}", headers=AZ_KEY)
    assert [m["id"] for m in r.json()["data"]] == ["fake-model"]
    r = await client.post(f"{upstream.url}/az/openai/deployments/d/nope", headers=AZ_KEY)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "404")


async def test_azure_v1_takes_an_api_key_or_a_bearer_token(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """/openai/v1: no api-version needed; api-key or Bearer; the body's model is the deployment."""
    base = f"{upstream.url}/az/openai/v1"
    for headers in (AZ_KEY, OA_AUTH):
        r = await client.post(f"{base}/chat/completions", headers=headers, json=chat(model="dep"))
        assert r.status_code == 200
    r = await client.post(f"{base}/chat/completions", json=chat(model="dep"))
    assert r.status_code == 401
    r = await client.post(f"{base}/embeddings", headers=AZ_KEY, json={"model": "emb", "input": "a"})
    assert r.json()["model"] == "emb"
    r = await client.get(f"{base}/models", headers=AZ_KEY)
    assert r.status_code == 200
    assert [q.model for q in upstream.requests[:2]] == ["dep", "dep"]


async def test_azure_faults_answer_in_azures_words(client: httpx.AsyncClient) -> None:
    """404 is DeploymentNotFound, 429 says when (and retry-after), a blocked prompt is a 400."""
    scenarios = {
        "missing": Scenario(faults=[Fault("status", status=404, rate=1.0)]),
        "busy": Scenario(faults=[Fault("status", status=429, rate=1.0, retry_after=3)]),
        "filtered": Scenario(faults=[Fault("content_filter", rate=1.0, after_chunks=0)]),
    }
    async with open_fake_upstream(scenarios) as up:

        async def post(scenario: str) -> httpx.Response:
            url = f"{up.url}/{scenario}/openai/deployments/d/chat/completions?{VERSION}"
            return await client.post(url, headers=AZ_KEY, json=chat())

        r = await post("missing")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "DeploymentNotFound")
        r = await post("busy")
        assert (r.status_code, r.json()["error"]["code"]) == (429, "429")
        assert "retry after 3 seconds" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "3"
        r = await post("filtered")
        error = r.json()["error"]
        assert (r.status_code, error["code"], error["param"]) == (400, "content_filter", "prompt")
        assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
        assert [q.fault for q in up.requests] == ["status", "status", "content_filter"]


async def test_azure_filter_chunks(client: httpx.AsyncClient) -> None:
    """azure_filter_chunks: the first chunk has no choices, only the prompt's filter results."""
    async with open_fake_upstream({"f": Scenario(azure_filter_chunks=True)}) as up:
        url = f"{up.url}/f/openai/deployments/d/chat/completions?{VERSION}"
        r = await client.post(url, headers=AZ_KEY, json=chat("a b", stream=True))
        body = chunks(r.text)
        assert body[0]["choices"] == []
        assert (body[0]["id"], body[0]["model"]) == ("", "")
        assert body[0]["prompt_filter_results"][0]["prompt_index"] == 0
        assert all(c["choices"][0]["content_filter_results"] for c in body[1:])
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body[1:])
        assert text == "echo: a b"
        # Not only on Azure paths: any OpenAI-format stream of the scenario.
        r = await client.post(
            f"{up.url}/f/v1/chat/completions", headers=OA_AUTH, json=chat(stream=True)
        )
        assert chunks(r.text)[0]["choices"] == []
        r = await client.post(f"{up.url}/f/v1/chat/completions", headers=OA_AUTH, json=chat())
        assert r.json()["prompt_filter_results"][0]["content_filter_results"]["hate"] == {
            "filtered": False,
            "severity": "safe",
        }


async def test_the_azure_sdk_reads_the_fake(client: httpx.AsyncClient) -> None:
    """openai.AzureOpenAI finds the dated paths and survives the empty-choices first chunk."""
    async with open_fake_upstream({"az": Scenario(azure_filter_chunks=True)}) as up:

        def run() -> None:
            with openai.AzureOpenAI(
                azure_endpoint=f"{up.url}/az",
                api_key="az-test-key",
                api_version="2024-10-21",
                max_retries=0,
            ) as sdk:
                done = sdk.chat.completions.create(
                    model="my-gpt", messages=[{"role": "user", "content": "hi you"}]
                )
                assert done.model == "my-gpt"
                assert done.choices[0].message.content == "echo: hi you"
                text = ""
                for chunk in sdk.chat.completions.create(
                    model="my-gpt", messages=[{"role": "user", "content": "a b"}], stream=True
                ):
                    text += "".join(c.delta.content or "" for c in chunk.choices if c.delta)
                assert text == "echo: a b"
                vectors = sdk.embeddings.create(model="my-emb", input=["a"], dimensions=4)
                assert len(vectors.data[0].embedding) == 4

        await in_thread(run)
        assert [q.path for q in up.requests] == [
            "/az/openai/deployments/my-gpt/chat/completions",
            "/az/openai/deployments/my-gpt/chat/completions",
            "/az/openai/deployments/my-emb/embeddings",
        ]
        assert all(q.query == VERSION and q.headers["api-key"] for q in up.requests)


# --------------------------------------------------------------------------- OpenRouter


async def test_openrouter_processing_comments_come_first(client: httpx.AsyncClient) -> None:
    """openrouter_processing=N: N ": OPENROUTER PROCESSING" comments before the first chunk."""
    async with open_fake_upstream({"or": Scenario(openrouter_processing=3)}) as up:
        url = up.base_url("or", "openai") + "/chat/completions"
        r = await client.post(url, headers=OA_AUTH, json=chat("a b", stream=True))
        events = [e for e in r.text.split("\n\n") if e]
        assert events[:3] == [": OPENROUTER PROCESSING"] * 3
        assert events[3].startswith("data: ")
        assert r.text.count("OPENROUTER") == 3
        r = await client.post(url, headers=OA_AUTH, json=chat())  # not a stream: no comments
        assert r.json()["choices"][0]["message"]["content"] == "echo: hello big world"


async def test_error_chunk_in_a_stream(client: httpx.AsyncClient) -> None:
    """error_chunk: after N content chunks, a chunk with a numeric error code and
    finish_reason "error", then [DONE]."""
    fault = Fault("error_chunk", rate=1.0, status=502, after_chunks=2)
    async with open_fake_upstream({"or": Scenario(faults=[fault])}) as up:
        url = up.base_url("or", "openai") + "/chat/completions"
        r = await client.post(url, headers=OA_AUTH, json=chat("a b c d", stream=True))
        assert r.status_code == 200
        data = payloads(r.text)
        assert data[-1] == "[DONE]"
        body = [json.loads(p) for p in data[:-1]]
        assert [c["choices"][0]["delta"].get("content") for c in body[1:3]] == ["echo:", " a"]
        error = body[3]
        assert error["error"]["code"] == 502
        assert isinstance(error["error"]["message"], str)
        assert error["error"]["message"]
        assert error["choices"][0]["finish_reason"] == "error"
        assert len(body) == 4
        assert up.requests[-1].outcome == "fault:error_chunk"


async def test_error_chunk_elsewhere(client: httpx.AsyncClient) -> None:
    """Not streaming it is a plain status; in another vendor's stream, its in-stream error."""
    fault = Fault("error_chunk", rate=1.0, status=429, after_chunks=0)
    async with open_fake_upstream({"x": Scenario(faults=[fault])}) as up:
        r = await client.post(
            up.base_url("x", "openai") + "/chat/completions", headers=OA_AUTH, json=chat()
        )
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        body = {**chat(stream=True), "max_tokens": 10}
        r = await client.post(
            up.base_url("x", "anthropic") + "/v1/messages", headers=headers, json=body
        )
        assert "event: error" in r.text
        assert [q.fault for q in up.requests] == ["error_chunk"] * 2


async def test_the_openai_sdk_raises_on_an_error_chunk(client: httpx.AsyncClient) -> None:
    """The official SDK turns our error chunk into an APIError after the content so far."""
    fault = Fault("error_chunk", rate=1.0, status=500, after_chunks=1)
    async with open_fake_upstream({"or": Scenario(faults=[fault], openrouter_processing=2)}) as up:

        def run() -> str:
            text = ""
            with openai.OpenAI(
                base_url=up.base_url("or", "openai"), api_key="k", max_retries=0
            ) as sdk:
                stream = sdk.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "a b"}], stream=True
                )
                with pytest.raises(openai.APIError):
                    for chunk in stream:
                        text += "".join(c.delta.content or "" for c in chunk.choices)
            return text

        assert await in_thread(run) == "echo:"


# --------------------------------------------------------------------------- Groq


async def test_groq_usage_rides_on_the_last_chunk(client: httpx.AsyncClient) -> None:
    """usage_location="x_groq": usage under x_groq.usage of the finish chunk, no usage chunk."""
    async with open_fake_upstream({"g": Scenario(usage_location="x_groq")}) as up:
        url = up.base_url("g", "openai") + "/chat/completions"
        whole = (await client.post(url, headers=OA_AUTH, json=chat("a b"))).json()
        assert whole["usage"]["completion_tokens"] == 3
        assert "usage" not in whole["x_groq"]
        for extra in ({"stream_options": {"include_usage": True}}, {}):
            r = await client.post(url, headers=OA_AUTH, json=chat("a b", stream=True, **extra))
            body = chunks(r.text)
            assert all(c["choices"] for c in body)  # no separate choices: [] usage chunk
            assert all("usage" not in c for c in body)
            last = body[-1]
            assert last["choices"][0]["finish_reason"] == "stop"
            usage = last["x_groq"]["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
                whole["usage"]["prompt_tokens"],
                whole["usage"]["completion_tokens"],
            )
            assert all("x_groq" not in c for c in body[:-1])
            assert payloads(r.text)[-1] == "[DONE]"


async def test_usage_location_default_keeps_the_usage_chunk(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The default: a separate choices: [] usage chunk when include_usage is on."""
    url = upstream.base_url("d", "openai") + "/chat/completions"
    extra = {"stream": True, "stream_options": {"include_usage": True}}
    body = chunks((await client.post(url, headers=OA_AUTH, json=chat(**extra))).text)
    assert body[-1]["choices"] == []
    assert body[-1]["usage"]["completion_tokens"] == 4
    assert all("x_groq" not in c for c in body)


# --------------------------------------------------------------------------- everything else


async def test_headers_and_models_are_recorded(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Attribution headers and test keys are kept as sent; each route records its model."""
    attribution = {"HTTP-Referer": "https://example.com", "X-Title": "My App", **OA_AUTH}
    await client.post(
        upstream.base_url("r", "openai") + "/chat/completions", headers=attribution, json=chat()
    )
    await client.post(
        f"{upstream.url}/r/v1beta/models/gemini-x:generateContent",
        headers={"x-goog-api-key": "g-key"},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    await client.post(f"{upstream.url}/r/api/chat", json={"model": "llama", "messages": []})
    first, gemini, _ = upstream.requests
    assert first.headers["http-referer"] == "https://example.com"
    assert first.headers["x-title"] == "My App"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert gemini.headers["x-goog-api-key"] == "g-key"
    assert [r.model for r in upstream.requests] == ["gpt-test", "gemini-x", "llama"]


async def test_unscoped_paths_use_the_default_scenario(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """/v1beta/... and /api/... without a scenario name are the "default" scenario."""
    r = await client.get(f"{upstream.url}/api/tags")
    assert r.json()["models"][0]["name"] == "fake-model"
    r = await client.get(f"{upstream.url}/v1beta/models", headers={"x-goog-api-key": "k"})
    assert r.json()["models"][0]["name"] == "models/fake-model"
    assert [q.scenario for q in upstream.requests] == ["default", "default"]


async def test_content_filter_fault_in_openai_and_anthropic_shapes(
    client: httpx.AsyncClient,
) -> None:
    """content_filter: OpenAI finishes "content_filter" (no content), Anthropic "refusal"."""
    blocked = Scenario(faults=[Fault("content_filter", rate=1.0, after_chunks=0)])
    cut = Scenario(reply="a b c d", faults=[Fault("content_filter", rate=1.0, after_chunks=2)])
    async with open_fake_upstream({"b": blocked, "c": cut}) as up:
        oa = up.base_url("b", "openai") + "/chat/completions"
        choice = (await client.post(oa, headers=OA_AUTH, json=chat())).json()["choices"][0]
        assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", None)
        oa = up.base_url("c", "openai") + "/chat/completions"
        body = chunks((await client.post(oa, headers=OA_AUTH, json=chat(stream=True))).text)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
        assert (text, body[-1]["choices"][0]["finish_reason"]) == ("a b", "content_filter")
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        an = up.base_url("b", "anthropic") + "/v1/messages"
        msg = (await client.post(an, headers=headers, json={**chat(), "max_tokens": 9})).json()
        assert (msg["stop_reason"], msg["content"]) == ("refusal", [])
        ollama = await client.post(f"{up.url}/b/api/chat", json={**chat(), "stream": False})
        assert ollama.json()["message"]["content"] == "echo: hello big world"  # no filter
        assert [q.fault for q in up.requests] == ["content_filter"] * 3 + [None]


async def test_the_openai_sdk_reads_every_trap_at_once() -> None:
    """Comments, Azure filter chunks and x_groq usage together still parse with the SDK."""
    scenario = Scenario(openrouter_processing=2, azure_filter_chunks=True, usage_location="x_groq")
    async with open_fake_upstream({"all": scenario}) as up:

        def run() -> None:
            with openai.OpenAI(
                base_url=up.base_url("all", "openai"), api_key="k", max_retries=0
            ) as sdk:
                text, extra = "", None
                for chunk in sdk.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "a b"}], stream=True
                ):
                    text += "".join(c.delta.content or "" for c in chunk.choices)
                    extra = (chunk.model_extra or {}).get("x_groq") or extra
                assert text == "echo: a b"
                assert extra is not None
                assert extra["usage"]["completion_tokens"] == 3

        await in_thread(run)


def test_new_fields_and_fault_kinds_load_from_toml(tmp_path: Path) -> None:
    """The new scenario fields and fault kinds decode from TOML; bad values name their path."""
    good = tmp_path / "good.toml"
    good.write_text(
        "[scenarios.router]\n"
        "openrouter_processing = 2\n"
        'usage_location = "x_groq"\n'
        "azure_filter_chunks = true\n"
        'faults = [{ kind = "error_chunk", status = 502, after_chunks = 1, rate = 0.5 },\n'
        '          { kind = "content_filter", on_requests = [3] }]\n'
    )
    scenario = load_scenarios(good)["router"]
    assert (scenario.openrouter_processing, scenario.usage_location) == (2, "x_groq")
    assert [f.kind for f in scenario.faults] == ["error_chunk", "content_filter"]
    for line, where in [
        ('usage_location = "x_openai"', "usage_location"),
        ("openrouter_processing = -1", "scenarios.bad"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[scenarios.bad]\n{line}\n")
        with pytest.raises(ConfigError, match=where):
            load_scenarios(bad)
