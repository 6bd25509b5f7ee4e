"""docker-compose.yml, deploy/Dockerfile and the monitoring files: valid and naming what the
code reads. No Docker engine runs here, so the files are validated (`docker-compose config`,
Debian's docker-compose, when installed) and checked against the code: every command is a real
`clickstream` subcommand that parses, every variable a real setting, every Grafana query a
metric the service exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import COMMANDS, build_parser
from service.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
BOTOCORE_VARIABLES = {
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
OUR_IMAGE = "clickstream:local"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose["services"].items() if v.get("image") == OUR_IMAGE}


def test_docker_compose_config_validates() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (Debian package) is not installed; make test installs it")
    for profile in ([], ["--profile", "monitoring"]):
        done = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True, text=True, check=False, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_the_pipeline_is_all_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(ours(compose)) == {"setup", "simulator", "agent", "service"}
    assert {"localstack", "prometheus", "grafana"} <= set(services)
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    emulated = set(services["localstack"]["environment"]["SERVICES"].split(","))
    assert emulated == {"kinesis", "s3", "cloudwatch", "dynamodb"}
    assert services["setup"]["depends_on"]["localstack"]["condition"] == "service_healthy"
    for name in ("agent", "service"):
        condition = services[name]["depends_on"]["setup"]["condition"]
        assert condition == "service_completed_successfully"
    assert "127.0.0.1:8000:8000" in services["service"]["ports"]
    # The simulator writes where the agent reads.
    written = services["simulator"]["command"][services["simulator"]["command"].index("--out") + 1]
    assert services["agent"]["command"][1] == written
    shared = {v.split(":")[0] for v in services["simulator"]["volumes"]}
    assert shared <= {v.split(":")[0] for v in services["agent"]["volumes"]}


def test_every_command_is_a_clickstream_subcommand_that_parses(compose: dict[str, Any]) -> None:
    for name, service in ours(compose).items():
        command = service["command"]
        assert command[0] in COMMANDS, name
        build_parser(only=command[0]).parse_args(command)  # exits 2 on an unknown option


def test_environment_names_what_the_code_reads(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {f"CLICKSTREAM_{name.upper()}" for name in Settings.model_fields}
    for name, service in ours(compose).items():
        environment = service.get("environment", {})
        names = set(environment)
        assert {n for n in names if n.startswith("CLICKSTREAM_")} <= settings, name
        assert {n for n in names if not n.startswith("CLICKSTREAM_")} <= BOTOCORE_VARIABLES
        if service["command"][0] != "simulate":
            assert names >= BOTOCORE_VARIABLES, f"{name} cannot reach LocalStack"
        with monkeypatch.context() as env:
            for key, value in environment.items():
                if key.startswith("CLICKSTREAM_") and key != "CLICKSTREAM_STATE_DIR":
                    env.setenv(key, str(value))
            load_settings()  # raises SettingsError naming any bad value


def test_grafana_queries_metrics_the_service_exposes() -> None:
    exposed = set(
        re.findall(
            r'"(clickstream_[a-z_]+)"', (REPO / "service" / "pipeline_metrics.py").read_text()
        )
    )
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/clickstream.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"clickstream_[a-z_]+", target["expr"])
    }
    # A counter family `x` is exposed as `x_total`.
    unknown = {n for n in used if n not in exposed and n.removesuffix("_total") not in exposed}
    assert used and unknown == set()
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["service:8000"]


def test_dockerfile_is_multi_stage_slim_pinned_non_root_and_healthy() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
    assert [name for _, name in stages] == ["build", "geoip", "runtime"]
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    runtime = text.split("AS runtime", 1)[1]
    (user,) = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user.split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert "pip install --no-compile ." in text and "[dev]" not in text and "[local]" not in text
    assert "--mount=type=secret,id=maxmind_license_key" in text  # never an ARG for the key
    assert "apt-get" not in runtime  # nothing installed into the final image
    for name in re.findall(r"(CLICKSTREAM_[A-Z_]+)=", runtime):
        assert name[len("CLICKSTREAM_") :].lower() in Settings.model_fields


def test_docker_context_holds_exactly_the_packages() -> None:
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set(re.findall(r"^COPY (\w+) \./", DOCKERFILE.read_text(), re.M))
    assert copied == {"agent", "consumers", "service"}
    assert included == copied | {"pyproject.toml", "README.md"}
