"""Cairn's Python API over HTTP: the same methods as CairnClient (client/api.py), through `cairn serve`.

A person who holds only an API key sets CAIRN_API_URL and CAIRN_API_KEY, and the `cairn` commands (and
this class, from Python) work as they do with Temporal access, within the key's tenant and role:

    from client.http_client import ApiClient
    cairn = ApiClient.from_env()
    run_id = await cairn.start("How do glaciers move?")
    async for event in cairn.events(run_id):
        print(event["type"])

An error answer becomes the same CairnError the Temporal client raises, with the API's `detail` as its
message. Must never: print or log the key; follow a redirect to another host with it (redirects are not
followed at all).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from client.api import (
    CairnError,
    ErrorKind,
    RunningActivity,
    RunSummary,
    validated_input,
    validated_steps,
)
from common.env import ConfigError, base_url
from common.models import (
    BudgetStatus,
    Clarification,
    Plan,
    ResearchResult,
    RunStatus,
    StepSpec,
)

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RECONNECTS = 30
RECONNECT_SECONDS = 1.0
_KINDS: dict[int, ErrorKind] = {404: "not_found", 409: "conflict", 422: "invalid", 503: "unavailable"}


def api_settings(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(CAIRN_API_URL, CAIRN_API_KEY) when the API is configured, else None."""
    env = os.environ if env is None else env
    url = base_url(env, "CAIRN_API_URL")
    if url is None:
        return None
    key = env.get("CAIRN_API_KEY", "").strip()
    if not key:
        raise ConfigError("CAIRN_API_URL is set but CAIRN_API_KEY is not: set it to your API key")
    return url, key


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


class ApiClient:
    # What the CLI shows where the Temporal client names its task queue.
    task_queue = "(the API's)"

    def __init__(self, url: str, key: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "cairn-cli"},
            timeout=TIMEOUT,
            follow_redirects=False,
            transport=transport,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiClient:
        settings = api_settings(env)
        if settings is None:
            raise ConfigError("set CAIRN_API_URL (and CAIRN_API_KEY) to use the HTTP API")
        return cls(*settings)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise CairnError(f"cannot reach the Cairn API at {self.url}: {err}", "unavailable") from None
        if response.status_code >= 400:
            raise _refusal(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any route of the API (`/v1/...`), its JSON answer (None for an empty one); a refusal is a
        CairnError as for the methods below. For commands whose routes have no method here."""
        response = await self._call(method, path, **kwargs)
        return response.json() if response.content else None

    # -- the CairnClient methods the CLI uses ----------------------------------------------------

    async def start(self, question: str, *, workflow_id: str | None = None, **options: Any) -> str:
        if workflow_id is not None:
            raise CairnError("the API chooses run ids; leave out --id", "invalid")
        request = validated_input(question, **options)
        body = request.model_dump(mode="json", exclude={"tenant", "carried"}, exclude_unset=True)
        started = await self._json("POST", "/v1/runs", json=body)
        return str(started["id"])

    async def status(self, workflow_id: str) -> RunStatus:
        return RunStatus.model_validate(await self._json("GET", f"/v1/runs/{_path(workflow_id)}"))

    async def approve(self, workflow_id: str, plan_version: int | None = None) -> int:
        answer = await self._json(
            "POST", f"/v1/runs/{_path(workflow_id)}/approve", json={"plan_version": plan_version}
        )
        return int(answer["plan_version"])

    async def revise(self, workflow_id: str, feedback: str, plan_version: int | None = None) -> int:
        answer = await self._json(
            "POST",
            f"/v1/runs/{_path(workflow_id)}/revise",
            json={"feedback": feedback, "plan_version": plan_version},
        )
        return int(answer["plan_version"])

    async def edit(
        self, workflow_id: str, steps: Sequence[StepSpec | dict[str, Any]], plan_version: int | None = None
    ) -> Plan:
        specs = validated_steps(steps)
        if plan_version is None:
            status = await self.status(workflow_id)
            if status.phase != "awaiting_approval" or status.plan is None:
                raise CairnError(f"run {workflow_id} is {status.phase}, not awaiting approval", "conflict")
            plan_version = status.plan.version
        answer = await self._json(
            "PUT",
            f"/v1/runs/{_path(workflow_id)}/plan",
            json={"plan_version": plan_version, "steps": [s.model_dump(mode="json") for s in specs]},
        )
        return Plan.model_validate(answer)

    async def skip_step(self, workflow_id: str, step_id: str) -> None:
        await self._call("POST", f"/v1/runs/{_path(workflow_id)}/skip", json={"step_id": step_id})

    async def add_step(
        self, workflow_id: str, title: str, kind: str = "research", description: str = ""
    ) -> None:
        await self._call(
            "POST",
            f"/v1/runs/{_path(workflow_id)}/steps",
            json={"title": title, "kind": kind, "description": description},
        )

    async def raise_budget(
        self,
        workflow_id: str,
        *,
        token_budget: int | None = None,
        cost_budget_usd: float | None = None,
        deadline_seconds: float | None = None,
    ) -> BudgetStatus:
        answer = await self._json(
            "POST",
            f"/v1/runs/{_path(workflow_id)}/budget",
            json={
                "token_budget": token_budget,
                "cost_budget_usd": cost_budget_usd,
                "deadline_seconds": deadline_seconds,
            },
        )
        return BudgetStatus.model_validate(answer)

    async def answer(self, workflow_id: str, answer: str) -> Clarification:
        reply = await self._json("POST", f"/v1/runs/{_path(workflow_id)}/answer", json={"answer": answer})
        return Clarification.model_validate(reply)

    async def abort(self, workflow_id: str, reason: str = "") -> None:
        await self._call("POST", f"/v1/runs/{_path(workflow_id)}/abort", json={"reason": reason})

    async def result(self, workflow_id: str) -> ResearchResult:
        """The run's result, once it has one: waits for its last event first, as CairnClient.result
        waits for the workflow."""
        async for _ in self.events(workflow_id):
            pass
        answer = await self._json(
            "GET", f"/v1/runs/{_path(workflow_id)}/report", headers={"Accept": "application/json"}
        )
        return ResearchResult.model_validate(answer)

    async def report_file(self, workflow_id: str, fmt: str) -> bytes:
        """The finished run's report as the file the API makes in `fmt` (client/web/export.py)."""
        from client.web.export import MEDIA_TYPES

        answer = await self._call(
            "GET", f"/v1/runs/{_path(workflow_id)}/report", headers={"Accept": MEDIA_TYPES[fmt]}
        )
        return answer.content

    async def running_activities(self, workflow_id: str) -> list[RunningActivity]:
        """Not exposed by the API: `cairn watch` shows the plan's running steps instead."""
        return []

    async def describe_status(self, workflow_id: str) -> None:
        return None

    async def events(self, workflow_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events from `after` (an event id) until its last one; each as a dict with its
        `id` added. Resumes after a dropped connection with Last-Event-ID."""
        last = after
        for _ in range(RECONNECTS):
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                async with self._http.stream(
                    "GET", f"/v1/runs/{_path(workflow_id)}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise _refusal(response)
                    event: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line.startswith(":"):
                            continue
                        if line:
                            field, _, value = line.partition(":")
                            event[field] = value.removeprefix(" ")
                            continue
                        if "data" in event:
                            data = json.loads(event["data"])
                            last = int(event.get("id", last))
                            yield {**data, "id": last}
                            if data.get("type") in ("done", "aborted", "failed"):
                                return
                        event = {}
            except httpx.TransportError:
                # The stream dropped (an API process went away): resume after `last`.
                await asyncio.sleep(RECONNECT_SECONDS)
        raise CairnError(f"lost the event stream of {workflow_id} and could not resume it", "unavailable")

    async def list(self, limit: int = 20) -> list[RunSummary]:
        answer = await self._json("GET", "/v1/runs", params={"limit": min(limit, 100)})
        return [
            RunSummary(
                workflow_id=run["id"],
                run_id=None,
                status=str(run["status"]).upper(),
                start_time=_time(run.get("started_at")),
                close_time=_time(run.get("closed_at")),
            )
            for run in answer["runs"]
        ]


def _path(workflow_id: str) -> str:
    if not workflow_id or "/" in workflow_id:
        raise CairnError(f"invalid run id {workflow_id!r}", "invalid")
    return workflow_id


def _refusal(response: httpx.Response) -> CairnError:
    try:
        detail = str(response.json().get("detail") or response.reason_phrase)
    except (ValueError, AttributeError):
        detail = response.reason_phrase or f"HTTP {response.status_code}"
    if response.status_code == 401:
        detail = f"the API refused the key: {detail}"
    return CairnError(detail, _KINDS.get(response.status_code, "refused"))
