"""Cairn speaks to LLM servers as they expect: JSON through `response_format` with the schema of the
model that validates it, a fallback chosen by what the server refuses, tool calls as providers really
send them, and reasoning models by configuration alone. The scripted server decides the form of each
answer by the request's shape, as a real one does (testkit/scripted_llm.py)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from client.api import CairnClient, CairnError
from common import errors
from common.config import LLMConfig
from common.names import LLM_CHAT
from common.structured import (
    contradictions_model,
    finding_model,
    plan_model,
    review_model,
    strict_json_schema,
)
from common.web_config import FetchConfig, SearchConfig
from testkit.research_site import ResearchSite
from testkit.scripted_llm import (
    REFUSES_JSON_SCHEMA,
    REFUSES_RESPONSE_FORMAT,
    Provider,
    ScriptedLLM,
    strict_schema_problem,
)
from tests.conftest import SENTINEL_KEY, llm_config
from tests.helpers import events_of, history, started_attempts
from worker import build_worker

JSON_ROLES = ("planner", "reviewer", "finding")
HONEST = Provider()


@pytest.fixture
def site() -> Iterator[ResearchSite]:
    server = ResearchSite().start()
    yield server
    server.stop()


def web(site: ResearchSite) -> dict[str, Any]:
    """Worker options for web search and page reads against the loopback research site."""
    return {"search": SearchConfig(searxng_url=site.url), "fetch": FetchConfig(allow_private=True)}


@asynccontextmanager
async def served(
    temporal_client: Client,
    task_queue: str,
    home: Path,
    provider: Provider = HONEST,
    config: dict[str, str] | None = None,
    **worker_options: object,
) -> AsyncIterator[tuple[CairnClient, ScriptedLLM]]:
    """A scripted server of the given kind and a worker talking to it."""
    llm = ScriptedLLM(api_key=SENTINEL_KEY, provider=provider).start()
    try:
        settings = llm_config(llm)
        if config is not None:
            settings = LLMConfig.from_env(
                {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": SENTINEL_KEY, **config}
            )
        async with build_worker(temporal_client, task_queue, settings, home=home, **worker_options):  # type: ignore[arg-type]
            yield CairnClient(temporal_client, task_queue), llm
    finally:
        llm.stop()


async def activity_summaries(cairn: CairnClient, workflow_id: str) -> list[str]:
    hist = await history(cairn, workflow_id)
    converter = cairn.temporal.data_converter
    summaries = []
    for event in events_of(hist, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):
        if event.user_metadata.HasField("summary"):
            summaries.append(str((await converter.decode([event.user_metadata.summary], [str]))[0]))
    return summaries


async def test_a_server_that_honours_response_format_needs_no_reasks(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    wid = await cairn.start("How do glaciers move? [steps=2] [replan=1]", auto_approve=True)
    result = await cairn.result(wid)

    assert not result.aborted and result.plan is not None and len(result.plan.steps) == 3
    # Every call that expects JSON asked for it with a schema, and got JSON of that schema at once.
    for role in JSON_ROLES:
        requests = [r for r in llm.requests if r.role == role]
        assert requests and all(r.response_format == "json_schema" and r.status == 200 for r in requests)
        assert {r.form for r in requests} == {"json_schema"}
    assert llm.calls("planner") == 1 and llm.calls("reviewer") == 2 and llm.calls("finding") == 3
    # Prose where prose is wanted, tools only where tools are offered.
    assert {r.form for r in llm.requests if r.role == "reporter"} == {"prose"}
    assert all(r.response_format == "" for r in llm.requests if r.role in ("reporter", "researcher"))
    assert all(r.tools for r in llm.requests if r.role == "researcher")
    assert not any(r.tools for r in llm.requests if r.role != "researcher")
    assert not [s for s in await activity_summaries(cairn, wid) if "re-ask" in s]
    # The format is asked for by the request, never described in the prompt.
    for request in llm.requests:
        assert "JSON Schema" not in json.dumps(request.messages)


async def test_a_finding_may_cite_only_the_sources_the_step_saw(
    temporal_client: Client, task_queue: str, tmp_path: Path, site: ResearchSite
) -> None:
    async with served(temporal_client, task_queue, tmp_path, **web(site)) as (cairn, llm):
        result = await cairn.result(await cairn.start("Cited [steps=1]", auto_approve=True))
    finding = next(r for r in llm.requests if r.role == "finding")
    listing = finding.messages[-1]["content"].split("Sources you may cite:", 1)[1]
    listed = re.findall(r"^\[(S\d+)\]", listing, flags=re.MULTILINE)
    assert finding.schema is not None
    cite = finding.schema["properties"]["claims"]["items"]["properties"]["sources"]["items"]
    # The schema's enum names exactly the sources listed to the model, so the server enforces them.
    assert len(listed) >= 2 and cite["enum"] == listed
    assert {s.via for s in result.sources} == {"fetched"}


async def test_json_schema_refused_falls_back_to_json_object_once_per_server_and_model(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    async with served(temporal_client, task_queue, tmp_path, REFUSES_JSON_SCHEMA) as (cairn, llm):
        wid = await cairn.start("Refused schemas [steps=2]", auto_approve=True)
        result = await cairn.result(wid)
    assert not result.aborted and result.plan is not None and len(result.plan.steps) == 2
    refused = [r for r in llm.requests if r.status == 400]
    # One refusal in all: the worker remembers what this server and model accept.
    assert len(refused) == 1 and refused[0].response_format == "json_schema"
    assert "response_format" in refused[0].error
    later = [r for r in llm.requests if r.role in JSON_ROLES and r.status == 200]
    assert later and {r.response_format for r in later} == {"json_object"}
    assert {r.form for r in later} == {"json_object"}
    # The fallback cost no Temporal attempt and repeated nothing: every LLM activity ran once.
    hist = await history(cairn, wid)
    assert set(started_attempts(hist)) == {1}
    assert not events_of(hist, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    assert not [s for s in await activity_summaries(cairn, wid) if "re-ask" in s]


async def test_response_format_refused_falls_back_to_the_schema_in_the_prompt(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    async with served(temporal_client, task_queue, tmp_path, REFUSES_RESPONSE_FORMAT) as (cairn, llm):
        wid = await cairn.start("No response format at all [steps=2]", auto_approve=True)
        result = await cairn.result(wid)
    assert not result.aborted and result.plan is not None and len(result.plan.steps) == 2
    refused = [r for r in llm.requests if r.status == 400]
    assert [r.response_format for r in refused] == ["json_schema", "json_object"]
    later = [r for r in llm.requests if r.role in JSON_ROLES and r.status == 200]
    # Told the shape in words, the server answers JSON wrapped in chatter; Cairn reads it all the same.
    assert (
        later and {r.response_format for r in later} == {""} and {r.form for r in later} == {"json_in_prose"}
    )
    assert not [s for s in await activity_summaries(cairn, wid) if "re-ask" in s]
    hist = await history(cairn, wid)
    assert set(started_attempts(hist)) == {1}


async def test_a_fixed_mode_is_used_as_configured(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    config = {"CAIRN_STRUCTURED_OUTPUT": "json_object"}
    async with served(temporal_client, task_queue, tmp_path, config=config) as (cairn, llm):
        await cairn.result(await cairn.start("Fixed mode [steps=1]", auto_approve=True))
    assert {r.response_format for r in llm.requests if r.role in JSON_ROLES} == {"json_object"}
    assert not [r for r in llm.requests if r.status != 200]


async def test_a_configured_mode_the_server_refuses_fails_clearly(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    config = {"CAIRN_STRUCTURED_OUTPUT": "json_schema"}
    async with served(temporal_client, task_queue, tmp_path, REFUSES_JSON_SCHEMA, config=config) as (
        cairn,
        llm,
    ):
        wid = await cairn.start("Insisting on schemas", auto_approve=True)
        with pytest.raises(CairnError, match=r"planning.*400.*response_format"):
            await cairn.result(wid)
    assert llm.calls("planner") == 1  # A bad request is not retried.


async def test_parallel_tool_calls_each_run_as_an_activity(
    temporal_client: Client, task_queue: str, tmp_path: Path, site: ResearchSite
) -> None:
    provider = Provider(parallel_tool_calls=True)
    async with served(temporal_client, task_queue, tmp_path, provider, **web(site)) as (cairn, llm):
        wid = await cairn.start("Both at once [steps=1]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
    first_turn = next(r for r in llm.requests if r.role == "researcher" and r.form == "tool_calls")
    assert set(first_turn.tools) >= {"web_search", "corpus_search"}
    names = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events_of(await history(cairn, f"{wid}/s1"), EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    ]
    assert names.count("researcher.web_search") == 1 and names.count("researcher.corpus_search") == 1
    assert result.sources


async def test_broken_tool_arguments_come_back_to_the_model_as_a_typed_error(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    async with served(temporal_client, task_queue, tmp_path, Provider(broken_tool_arguments=True)) as (
        cairn,
        llm,
    ):
        wid = await cairn.start("Broken arguments [steps=1]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
    turns = [r for r in llm.requests if r.role == "researcher"]
    answered = [m for m in turns[1].messages if m.get("role") == "tool"]
    assert answered and all("tool error (ToolBadArguments)" in m["content"] for m in answered)
    # The model saw why, asked again properly, and the step finished.
    assert (
        turns[2].messages[-1]["role"] == "tool"
        and errors.TOOL_BAD_ARGUMENTS not in turns[2].messages[-1]["content"]
    )
    assert result.plan is not None and result.plan.steps[0].status == "done"


async def test_a_model_without_tool_calling_fails_its_step_with_the_fix(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    async with served(temporal_client, task_queue, tmp_path, Provider(tools=False)) as (cairn, llm):
        wid = await cairn.start("No tools [steps=1]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
    assert result.plan is not None and result.plan.steps[0].status == "failed"
    assert "does not support tool calling" in (result.plan.steps[0].error or "")
    assert "CAIRN_RESEARCHER_MODEL" in (result.plan.steps[0].error or "")
    assert llm.calls("researcher") == 1  # Refused once, not retried: it cannot help.


async def test_reasoning_models_work_by_configuration_alone(
    temporal_client: Client, task_queue: str, tmp_path: Path
) -> None:
    config = {
        "CAIRN_MODEL": "gpt-4o-mini",
        "CAIRN_PLANNER_MODEL": "o4-mini",
        "CAIRN_PLANNER_REASONING_EFFORT": "high",
        "CAIRN_REPORTER_MODEL": "gpt-5-mini",
        "CAIRN_TEMPERATURE": "0.3",
        "CAIRN_MAX_OUTPUT_TOKENS": "4000",
    }
    async with served(temporal_client, task_queue, tmp_path, config=config) as (cairn, llm):
        result = await cairn.result(await cairn.start("Reasoning [steps=1]", auto_approve=True))
    assert not result.aborted and not [r for r in llm.requests if r.status != 200]
    planner = [r for r in llm.requests if r.role in ("planner", "reviewer")]
    assert planner and all(r.model == "o4-mini" for r in planner)
    assert all(r.params == {"reasoning_effort": "high", "max_completion_tokens": 4000} for r in planner)
    reporter = [r for r in llm.requests if r.role == "reporter"]
    assert all("temperature" not in r.params and "reasoning_effort" not in r.params for r in reporter)
    others = [r for r in llm.requests if r.role in ("researcher", "finding")]
    assert all(r.params == {"temperature": 0.3, "max_completion_tokens": 4000} for r in others)
    # OpenAI's o-series reads the system prompt as the developer's.
    assert planner[0].messages[0]["role"] == "developer"


def test_every_schema_cairn_sends_passes_strict_mode() -> None:
    models: list[type[BaseModel]] = [plan_model(n) for n in (1, 8, 20)]
    models += [plan_model(8, ids) for ids in (("s1",), ("s1", "s2", "s10"))]
    models += [review_model(3, ("s1", "s2")), review_model(0)]
    models += [finding_model(()), finding_model(("S1",)), finding_model(tuple(f"S{i}" for i in range(1, 40)))]
    models += [contradictions_model(1, 1), contradictions_model(30, 30)]
    for model in models:
        assert strict_schema_problem(strict_json_schema(model)) is None, model


def test_the_scripted_server_refuses_what_openai_refuses() -> None:
    loose: dict[str, object] = {
        "type": "object",
        "properties": {"a": {"type": "string", "default": "x"}},
        "required": ["a"],
    }
    assert "'additionalProperties' is required" in (strict_schema_problem(loose) or "")
    loose["additionalProperties"] = False
    assert "'default' is not permitted" in (strict_schema_problem(loose) or "")
    partial = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": [],
        "additionalProperties": False,
    }
    assert "Missing 'a'" in (strict_schema_problem(partial) or "")


async def test_llm_chat_asks_for_json_only_where_json_is_expected(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    wid = await cairn.start("Shapes [steps=1]", auto_approve=True, max_plan_iterations=0)
    await cairn.result(wid)
    hist = await history(cairn, wid)
    scheduled = events_of(hist, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    inputs = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in scheduled
        if e.activity_task_scheduled_event_attributes.activity_type.name == LLM_CHAT
    ]
    by_purpose = {i["purpose"]: i.get("output") for i in inputs}
    assert by_purpose["plan v1"]["name"] == "plan" and by_purpose["plan v1"]["strict"] is True
    assert by_purpose["write report"] is None
