"""Domain policies: allow and block lists, per deployment and per tenant, applied by `web_search` (hits
filtered, Tavily asked with include/exclude_domains) and `fetch_url` (refused with the typed error the
model reads, on every redirect hop), and stated in the report's Method section. Against the real dev
server, worker, scripted LLM, a loopback web serving one site under two names, and `cairn serve`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.fetch import PageFetcher
from activities.web_search import WebSearch
from client.api import CairnClient
from client.server.policy import Policies
from common import errors
from common.domains import DomainList, DomainPolicy, deployment_domains
from common.env import ConfigError
from common.web_config import FetchConfig, SearchConfig
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import ScriptedLLM
from testkit.web_fixtures import TAVILY_KEY, WebFixtures
from tests.api_support import ApiStack, api_stack
from tests.conftest import llm_config
from tests.helpers import history, scheduled_activities
from worker import build_worker

OPEN = FetchConfig(allow_private=True)  # The loopback web.


def test_a_domain_covers_its_subdomains_a_block_wins_and_every_allow_list_must_agree() -> None:
    policy = DomainPolicy(
        deployment=DomainList(allow=("example.org", "ÄÖ.de"), block=("ads.example.org",)),
        # As a TOML list, and as an environment variable's comma-separated text.
        tenant=DomainList.model_validate(
            {"allow": ["*.example.org"], "block": "tracker.net, bad.example.org"}
        ),
    )
    assert policy.refusal("https://www.example.org/a") is None
    assert policy.refusal("https://EXAMPLE.org./a") is None
    assert "blocked" in str(policy.refusal("https://x.ads.example.org/"))
    assert "blocked" in str(policy.refusal("https://bad.example.org/"))
    assert "not among" in str(policy.refusal("https://badexample.org/"))  # not a subdomain
    assert "not among" in str(policy.refusal("https://xn--4ca0b.de/"))  # the deployment's, not the tenant's
    assert "names no host" in str(policy.refusal("not a url"))
    assert policy.deployment.allow == ("example.org", "xn--4ca0b.de")
    assert policy.allowed_only() == ()  # Two allow lists: the backend is not asked, hits are filtered.
    assert policy.blocked() == ("ads.example.org", "tracker.net", "bad.example.org")
    assert DomainPolicy().refusal("https://anything.example/") is None
    for bad in ("https://example.org/", "exa mple.org", "a..b", "-x.org", "x" * 64 + ".org"):
        with pytest.raises(ValueError, match="not a domain name"):
            DomainList(block=(bad,))
    with pytest.raises(ValueError, match="CAIRN_BLOCK_DOMAINS"):
        deployment_domains({"CAIRN_BLOCK_DOMAINS": "example.org, http://x.org/"})


def test_the_tenants_file_and_the_environment_give_each_tenant_its_policy(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        '[defaults]\nblock_domains = ["spam.example"]\n[tenants.acme]\nallow_domains = ["acme.com"]\n'
    )
    policies = Policies.from_env({"CAIRN_TENANTS_FILE": str(tenants), "CAIRN_BLOCK_DOMAINS": "evil.example"})
    acme = policies.domains_of("acme")
    assert acme is not None and acme.deployment.block == ("evil.example",)
    assert acme.tenant.allow == ("acme.com",) and acme.tenant.block == ("spam.example",)  # defaults inherited
    other = policies.domains_of("globex")
    assert other is not None and other.tenant.allow == () and other.tenant.block == ("spam.example",)
    assert Policies.from_env({}).domains_of("acme") is None
    tenants.write_text('[tenants.acme]\nallow_domains = ["https://acme.com/"]\n')
    with pytest.raises(ConfigError, match=r"\[tenants.acme\].*not a domain name"):
        Policies.from_env({"CAIRN_TENANTS_FILE": str(tenants)})


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixtures]:
    fixtures = WebFixtures().start()
    yield fixtures
    fixtures.stop()


async def test_fetch_refuses_a_blocked_domain_on_every_redirect_hop(web: WebFixtures) -> None:
    blocked = DomainPolicy(tenant=DomainList(block=("localhost",)))
    target = web.url.replace("127.0.0.1", "localhost") + "/pages/glacier-flow.html"
    with pytest.raises(ApplicationError) as refused:
        await PageFetcher(OPEN).fetch(f"{web.url}/redirect?to={target}", domains=blocked)
    assert refused.value.type == errors.DOMAIN_BLOCKED and refused.value.non_retryable
    assert "localhost is blocked by this run's domain policy" in refused.value.message
    assert web.seen("/redirect") and not web.seen("/pages/glacier-flow.html")  # Never asked for.
    page = await PageFetcher(OPEN).fetch(web.url_for("glacier-flow"), domains=blocked)
    assert page.text


async def test_tavily_is_asked_for_the_allowed_domains_and_its_hits_are_filtered(web: WebFixtures) -> None:
    search = WebSearch(
        SearchConfig(tavily_api_key=TAVILY_KEY, tavily_url=web.tavily_url(), timeout_seconds=5)
    )
    policy = DomainPolicy(
        deployment=DomainList(allow=("wikipedia.org", "usgs.gov"), block=("britannica.com",))
    )
    found = await search.search("how do glaciers move", max_results=5, domains=policy)
    asked = json.loads(web.seen("/tavily/ok")[-1].body)
    assert asked["include_domains"] == ["wikipedia.org", "usgs.gov"]
    assert asked["exclude_domains"] == ["britannica.com"]
    # The recorded answer ignores the lists, as a backend might: the hits are filtered all the same.
    assert [hit.url for hit in found.hits] == [
        "https://en.wikipedia.org/wiki/Glacier",
        "https://www.usgs.gov/faqs/how-do-glaciers-move",
    ]
    assert found.withheld == 3


@pytest.fixture(scope="module")
def site() -> Iterator[ResearchSite]:
    server = ResearchSite()
    server.hosts = {1: "localhost", 7: "localhost"}  # The same server, under a second name.
    server.start()
    yield server
    server.stop()


async def test_a_run_keeps_to_its_policy_and_its_report_says_so(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, site: ResearchSite
) -> None:
    blocked_page = site.article_url(7)
    async with build_worker(
        temporal_client,
        task_queue,
        llm_config(llm),
        home=tmp_path,
        search=SearchConfig(searxng_url=site.url),
        fetch=OPEN,
    ):
        cairn = CairnClient(temporal_client, task_queue)
        wid = await cairn.start(
            f"Kept to a policy [steps=1] [fetch={blocked_page}]",
            auto_approve=True,
            max_plan_iterations=0,
            domains=DomainPolicy(tenant=DomainList(block=("localhost",))),
        )
        result = await cairn.result(wid)
    # Article 1 (on localhost) was found but withheld; article 2 read; article 7 refused unread.
    assert "/article/2" in site.requests
    assert "/article/1" not in site.requests and "/article/7" not in site.requests
    assert result.sources and not any("localhost" in (s.url or "") for s in result.sources)
    method = result.report.split("## Method", 1)[1]
    assert "blocked by the tenant: localhost" in method
    said = "\n".join(
        str(m.get("content")) for r in llm.requests if r.role == "researcher" for m in r.messages
    )
    assert "(1 more withheld by this run's domain policy)" in said
    assert errors.DOMAIN_BLOCKED in said and "localhost is blocked by this run's domain policy" in said
    # The refused read never became an activity: only article 2's fetch ran.
    step = await history(cairn, f"{wid}/s1")
    assert scheduled_activities(step).count("researcher.fetch_url") == 1


@pytest.fixture(scope="module")
async def stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    payload_dir: Path,
    site: ResearchSite,
) -> AsyncIterator[ApiStack]:
    async for built in api_stack(
        dev_server,
        temporal_client,
        tmp_path_factory.mktemp("domains"),
        payload_dir,
        worker_options={"search": SearchConfig(searxng_url=site.url), "fetch": OPEN},
        CAIRN_BLOCK_DOMAINS="localhost",
    ):
        yield built


async def test_the_api_gives_each_run_the_deployments_policy_and_takes_none_from_a_caller(
    stack: ApiStack,
) -> None:
    async with await stack.client("atlas") as http:
        forged = await http.post(
            "/v1/runs", json={"question": "q", "domains": {"tenant": {"allow": ["x.org"]}}}
        )
        assert forged.status_code == 422 and "domains" in forged.text
        started = await http.post(
            "/v1/runs",
            json={"question": "Kept by the API [steps=1]", "auto_approve": True, "max_plan_iterations": 0},
        )
        run_id = started.json()["id"]
        await stack.temporal.get_workflow_handle(run_id).result()
        report = (await http.get(f"/v1/runs/{run_id}/report")).text
    assert "blocked by the deployment: localhost" in report.split("## Method", 1)[1]
