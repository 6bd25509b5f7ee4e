"""deploy/cloudformation.yaml: valid (cfn-lint), least privilege, and in step with the code.

The template is data the code cannot check at run time, so these tests tie it to the code: the
task role allows exactly the AWS calls the consumer and service make, the agent role those of
the agent; the dashboard and the Athena columns are rendered from the code (deploy/render.py);
every environment variable is a real setting; and the defaults are the deployment that
`clickstream cost` prices.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from consumers.scheduler import DEFAULT_STOP_TIMEOUT_S
from service.cost import Workload
from service.dashboard import LAB_WIDGET_TITLES, dashboard_body
from service.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO / "deploy" / "cloudformation.yaml"

# Calls that have no resource-level permissions in IAM, so `Resource: "*"` is the only way to
# allow them; each is a single action, never a wildcard.
RESOURCE_STAR_ALLOWED = {
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",  # narrowed by a cloudwatch:namespace condition (tested below)
    "cloudwatch:ListDashboards",
}

# botocore operation -> IAM action, for every call our code makes on the data path.
IAM_ACTION = {
    "describe_stream_summary": "kinesis:DescribeStreamSummary",
    "describe_stream": "kinesis:DescribeStream",
    "list_shards": "kinesis:ListShards",
    "get_shard_iterator": "kinesis:GetShardIterator",
    "get_records": "kinesis:GetRecords",
    "put_records": "kinesis:PutRecords",
    "put_record": "kinesis:PutRecord",
    "put_object": "s3:PutObject",
    "get_object": "s3:GetObject",
    "delete_objects": "s3:DeleteObject",
    "delete_object": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
    "head_bucket": "s3:ListBucket",
    "head_object": "s3:GetObject",
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "scan": "dynamodb:Scan",
    "query": "dynamodb:Query",
    "describe_table": "dynamodb:DescribeTable",
    "put_metric_data": "cloudwatch:PutMetricData",
    "list_dashboards": "cloudwatch:ListDashboards",
}
_CALL = re.compile(
    r"\b_?(?:client|kinesis|s3|dynamodb|cloudwatch)\.("
    + "|".join(sorted(IAM_ACTION, key=len, reverse=True))
    + r")\("
)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.loads(TEMPLATE_PATH.read_text())


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every statement of a policy document, both branches of an Fn::If included."""
    for entry in document["Statement"]:
        if "Fn::If" in entry:
            for branch in entry["Fn::If"][1:]:
                if branch != {"Ref": "AWS::NoValue"}:
                    yield branch
        else:
            yield entry


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_actions(template: dict[str, Any], role: str) -> set[str]:
    actions: set[str] = set()
    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in statements(policy["PolicyDocument"]):
            assert statement["Effect"] == "Allow"
            actions |= set(as_list(statement["Action"]))
    return actions


def calls_in(*places: str) -> set[str]:
    """botocore operations called on an AWS client in these files or folders."""
    found: set[str] = set()
    for place in places:
        path = REPO / place
        for source in path.rglob("*.py") if path.is_dir() else [path]:
            found |= set(_CALL.findall(source.read_text()))
    return found


def test_cfn_lint_reports_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from cfnlint.runner import main; main()", str(TEMPLATE_PATH)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_policy_allows_everything(template: dict[str, Any]) -> None:
    documents: list[tuple[str, dict[str, Any]]] = []
    for name, role in resources(template, "AWS::IAM::Role").items():
        documents += [(name, p["PolicyDocument"]) for p in role["Properties"].get("Policies", [])]
    for name, key in resources(template, "AWS::KMS::Key").items():
        documents.append((name, key["Properties"]["KeyPolicy"]))
    assert len(documents) >= 5
    for name, document in documents:
        for statement in statements(document):
            if statement["Effect"] != "Allow":
                continue
            actions = as_list(statement["Action"])
            assert all(a != "*" and not a.endswith(":*") for a in actions), (name, statement)
            if "*" in as_list(statement["Resource"]) and not name.endswith("Key"):
                # A key policy's "*" is the key itself; elsewhere only calls IAM cannot scope.
                assert set(actions) <= RESOURCE_STAR_ALLOWED, (name, statement)


def test_metrics_may_go_only_to_our_namespace(template: dict[str, Any]) -> None:
    policy = template["Resources"]["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    (put,) = [s for s in statements(policy) if s["Action"] == "cloudwatch:PutMetricData"]
    assert put["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": {"Ref": "MetricsNamespace"}}
    }


def test_task_role_allows_every_call_the_service_makes(template: dict[str, Any]) -> None:
    # Setup-time calls (service/resources.py) and the SQL mirror are not the task's:
    # CloudFormation creates the resources, and SQL runs on an operator's machine.
    used = calls_in("consumers", "service/readiness.py")
    assert {"get_records", "put_object", "update_item", "put_metric_data"} <= used
    actions = role_actions(template, "TaskRole")
    needed = {IAM_ACTION[call] for call in used}
    assert needed - actions == set()
    assert "cloudwatch:PutDashboard" not in actions and "kinesis:CreateStream" not in actions


def test_agent_role_allows_exactly_the_agents_calls(template: dict[str, Any]) -> None:
    needed = {IAM_ACTION[call] for call in calls_in("agent")}
    assert needed == {"kinesis:PutRecords", "kinesis:ListShards"}
    assert role_actions(template, "AgentRole") == needed


def test_generated_blocks_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "render.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_the_one_setup_creates(template: dict[str, Any]) -> None:
    body, variables = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert variables == {"ArchiveBucketName": {"Ref": "ArchiveBucket"}}
    settings = Settings()
    for name, value in {
        "${AWS::Region}": "eu-west-1",
        "${StreamName}": settings.stream,
        "${ArchiveBucketName}": settings.bucket,
        "${MetricsNamespace}": settings.metrics_namespace,
    }.items():
        body = body.replace(name, value)
    rendered = json.loads(body)
    assert rendered == dashboard_body(settings, "eu-west-1")
    titles = [w["properties"].get("title") for w in rendered["widgets"]]
    assert set(LAB_WIDGET_TITLES) <= set(titles)
    assert any("Funnel" in str(t) for t in titles) and any("Conversion" in str(t) for t in titles)


def test_every_environment_variable_is_a_setting(template: dict[str, Any]) -> None:
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    names = set()
    for entry in container["Environment"]:
        if "Fn::If" in entry:
            entry = entry["Fn::If"][1]
        names.add(entry["Name"])
    secrets = container["Secrets"]["Fn::If"][1]
    assert [s["Name"] for s in secrets] == ["CLICKSTREAM_ARCHIVE_IP_KEY"]
    names.add(secrets[0]["Name"])
    clickstream = {n for n in names if n.startswith("CLICKSTREAM_")}
    fields = {f"CLICKSTREAM_{f.upper()}" for f in Settings.model_fields}
    assert clickstream - fields == set()
    assert names - clickstream == {"AWS_REGION"}


def test_container_health_stop_and_logs(template: dict[str, Any]) -> None:
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert "/healthz" in " ".join(container["HealthCheck"]["Command"])
    assert container["Command"][:1] == ["serve"] and "8000" in container["Command"]
    # The worker's own drain deadline ends before ECS's SIGKILL.
    assert container["StopTimeout"] >= DEFAULT_STOP_TIMEOUT_S + 5
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["ReadonlyRootFilesystem"] is True
    mounts = {m["ContainerPath"] for m in container["MountPoints"]}
    assert {"/var/lib/clickstream", "/tmp"} <= mounts


def test_archive_bucket_is_private_encrypted_and_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ArchiveBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["BucketKeyEnabled"] is True
    policy = template["Resources"]["ArchiveBucketPolicy"]["Properties"]["PolicyDocument"]
    tls = [s for s in policy["Statement"] if s.get("Condition", {}).get("Bool")]
    assert tls and tls[0]["Effect"] == "Deny"
    assert tls[0]["Condition"]["Bool"] == {"aws:SecureTransport": "false"}
    events = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "events/"]
    classes = [t["StorageClass"] for t in events[0]["Transitions"]]
    assert classes == ["STANDARD_IA", "GLACIER_IR"]


def test_defaults_are_what_clickstream_cost_prices(template: dict[str, Any]) -> None:
    parameters = {k: v.get("Default") for k, v in template["Parameters"].items()}
    w = Workload(hits_per_day=0)
    assert parameters["ShardCount"] == w.shards == Settings().shards
    assert parameters["StreamMode"].lower() == w.kinesis_mode
    assert int(parameters["TaskCpu"]) / 1024 == w.vcpu
    assert int(parameters["TaskMemory"]) / 1024 == w.memory_gb
    assert parameters["DesiredCount"] == w.tasks
    assert parameters["FlushSeconds"] == w.flush_seconds
    assert parameters["TopCities"] == w.top_cities
    assert parameters["LogRetentionDays"] == w.log_retention_days
    assert parameters["InfrequentAccessAfterDays"] == w.standard_days
    assert parameters["GlacierAfterDays"] == w.standard_ia_days
    assert parameters["ArchiveEncryption"] == f"SSE-{w.sse.upper()}"
    assert len(resources(template, "AWS::CloudWatch::Alarm")) == w.alarms
    assert len(resources(template, "AWS::CloudWatch::Dashboard")) == w.dashboards


def test_template_settings_are_valid_settings(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task's environment, parameters at their defaults, passes the settings' validation."""
    parameters = {k: v.get("Default") for k, v in template["Parameters"].items()}
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    for entry in container["Environment"]:
        if "Fn::If" in entry or not entry["Name"].startswith("CLICKSTREAM_"):
            continue
        value = entry["Value"]
        if isinstance(value, dict):
            value = parameters.get(value["Ref"], "cafe-clickstream-archive")
        monkeypatch.setenv(entry["Name"], str(value))
    settings = load_settings()
    assert settings.flush_seconds == 60 and settings.archive_ip_mode == "truncated"
