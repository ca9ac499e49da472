"""docker-compose.yml describes a real deployment, and the compose tool's own schema accepts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.helpers import run

ROOT = Path(__file__).resolve().parent.parent


def compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is missing: install.sh --test installs Debian's docker-compose"
    return found


async def test_compose_file_is_valid_and_complete() -> None:
    await run(compose(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q")
    _, services, _ = await run(compose(), "-f", str(ROOT / "docker-compose.yml"), "config", "--services")
    assert set(services.split()) == {"postgresql", "temporal", "temporal-ui", "worker", "api"}
    _, rendered, _ = await run(compose(), "-f", str(ROOT / "docker-compose.yml"), "config")
    assert "DB: postgres12" in rendered and "TEMPORAL_ADDRESS: temporal:7233" in rendered
    assert "- doctor" in rendered  # the worker's health check is `cairn doctor`
    assert "/readyz" in rendered  # the API's is its readiness route
    assert "matching.enableFairness" in (ROOT / "temporal-dynamicconfig.yaml").read_text()
    # The API is the only published port, on loopback unless told otherwise; Temporal and its Web UI
    # stay on the compose network.
    assert rendered.count("ports:") == 1 and "- 127.0.0.1:8000:8000" in rendered
    # Worker and API read the same quotas, domain lists and ledger: the worker admits scheduled runs.
    shared = {"CAIRN_TENANTS_FILE", "CAIRN_ALLOW_DOMAINS", "CAIRN_BLOCK_DOMAINS", "DATABASE_URL"}
    worker, api = (yaml.safe_load(rendered)["services"][name]["environment"] for name in ("worker", "api"))
    assert shared <= set(worker) and shared <= set(api)
    assert all(worker[name] == api[name] for name in shared)


async def test_the_validator_would_catch_a_broken_file(tmp_path: Path) -> None:
    broken = (ROOT / "docker-compose.yml").read_text().replace("service_healthy", "service_wonky")
    (tmp_path / "docker-compose.yml").write_text(broken)
    code, _, err = await run(
        compose(), "-f", str(tmp_path / "docker-compose.yml"), "config", "-q", check=False
    )
    assert code != 0 and "service_wonky" in err
