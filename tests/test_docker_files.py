"""docker/ cannot be run here (no Docker engine): lint the Dockerfile with hadolint, validate
compose.yaml against the Compose specification, and pin what the files promise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed (it is in the test extra)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_a_pinned_non_root_migration_image() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    images = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert images
    assert all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image) for image in images)
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["langchain-sqlcache"]' in dockerfile


def test_compose_file_follows_the_compose_spec() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(DOCKER / "compose.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_pinned_healthy_and_utf8mb4() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mysql", "mariadb"}
    assert services["postgres"]["image"].startswith("postgres:16.")
    assert services["mysql"]["image"].startswith("mysql:8.4.")
    assert services["mariadb"]["image"].startswith("mariadb:11.")
    for name, service in services.items():
        assert "healthcheck" in service, name
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), name
    for name in ("mysql", "mariadb"):
        assert "--character-set-server=utf8mb4" in services[name]["command"]
