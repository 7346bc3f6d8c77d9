"""deploy/ agrees with the code: what the image, manifests and alerts rely on, the code provides.

Pinned down here:
- every environment variable a manifest sets is one the code reads (found by scanning
  aggregator/ and digest/ for environment lookups, and by recording what the settings
  loaders look up), so a renamed or misspelt variable fails here, not silently in a cluster;
- every `edge_aggregator_*` metric an alert uses is exported by the daemon's real registry,
  and every other metric is a kube-state-metrics one;
- the probes and the Service point at the port and paths the real health server answers,
  and the client-certificate Secret is mounted where the code looks by default;
- the kustomizations parse and list only files that exist (and render, where kubectl is);
- the image: multi-stage, numeric non-root USER equal to the pods' runAsUser, no compiler
  and no embedded PostgreSQL in the final stage, entry points that are console scripts;
- the workloads' shape the issue asks for (one replica, Recreate, restricted pods, a daily
  Forbid CronJob that keeps failed Jobs longer than the alert looks back);
- the alerts fire as documented (promtool unit tests, where promtool is installed), and
  each has a summary and a runbook section in deploy/README.md.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import generate_latest

from aggregator import settings as settings_module
from aggregator.buffer import EdgeBuffer
from aggregator.daemon import SHUTDOWN_BUDGET_SECONDS
from aggregator.goldmane_client import STEPS
from aggregator.health import HealthServer
from aggregator.metrics import DaemonMetrics
from aggregator.settings import (
    DEFAULT_CA_FILE,
    DEFAULT_CERT_FILE,
    DEFAULT_GOLDMANE_HOST,
    DEFAULT_KEY_FILE,
    SettingsError,
    load_daemon_settings,
    load_database_url,
    load_digest_settings,
    load_log_format,
    parse_host_port,
)
from digest.cli import EXIT_BUSY, EXIT_SLACK_REJECTED, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CODE_DIRS = (REPO / "aggregator", REPO / "digest")

Doc = dict[str, Any]

# The kube-state-metrics series the alerts may use (docs/metrics/workload/
# deployment-metrics.md and job-metrics.md of kubernetes/kube-state-metrics).
KUBE_STATE_METRICS = {
    "kube_deployment_status_replicas_available",
    "kube_job_failed",
    "kube_job_owner",
    "kube_job_created",
    "kube_job_status_failed",
}
ISSUE_ALERTS = {
    "EdgeAggregatorDown",
    "EdgeAggregatorStale",
    "EdgeAggregatorFlushFailing",
    "EdgeDigestFailing",
}
# Egress the issue allows: DNS, Goldmane, PostgreSQL, HTTPS.
ALLOWED_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 7443), ("TCP", 5432), ("TCP", 443)}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3?-dev)\b")


# --- reading deploy/ ------------------------------------------------------------------------


def load_yaml(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def kustomization_files() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def kustomization(directory: Path) -> Doc:
    (doc,) = load_yaml(directory / "kustomization.yaml")
    return doc


def resource_files(directory: Path) -> Iterator[Path]:
    """The manifest files a kustomization pulls in, following directories it lists."""
    for entry in kustomization(directory).get("resources", []):
        path = directory / entry
        if path.is_dir():
            yield from resource_files(path)
        else:
            yield path


def manifests(directory: Path = DEPLOY) -> list[Doc]:
    return [doc for path in resource_files(directory) for doc in load_yaml(path)]


def all_manifests() -> list[Doc]:
    return [doc for path in kustomization_files() for doc in manifests(path.parent)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads() -> list[Doc]:
    return [doc for doc in all_manifests() if doc["kind"] in ("Deployment", "CronJob")]


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def alert_rules() -> list[Doc]:
    rule = one(manifests(DEPLOY / "monitoring"), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def aggregator_deployment() -> Doc:
    return one(manifests(), "Deployment", "edge-aggregator")


def digest_cronjob() -> Doc:
    return one(manifests(), "CronJob", "edges-digest")


# --- what the code does ---------------------------------------------------------------------

_ENV_LOOKUP = re.compile(
    r"""(?:\benv|\benviron)\s*(?:\.get\(|\.setdefault\(|\.pop\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|\bgetenv\(\s*["']([A-Z][A-Z0-9_]*)["']"""
)


class _RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, preset: dict[str, str]) -> None:
        self._preset = preset
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return self._preset[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._preset)

    def __len__(self) -> int:
        return len(self._preset)


def env_vars_in_source() -> set[str]:
    """Names in `env.get("X"`, `env["X"]`, `os.environ.get("X"`, `os.getenv("X"` and the like."""
    names: set[str] = set()
    for directory in CODE_DIRS:
        for path in directory.rglob("*.py"):
            if "wire" in path.parts:
                continue
            for match in _ENV_LOOKUP.finditer(path.read_text(encoding="utf-8")):
                names.add(match.group(1) or match.group(2))
    return names


def env_vars_looked_up_by_settings() -> set[str]:
    """What each `load_*(env)` of aggregator.settings looks up, names held in variables included."""
    env = _RecordingEnv({"GOLDMANE_TLS_INSECURE": "1", "DRY_RUN": "1"})
    for name, function in inspect.getmembers(settings_module, inspect.isfunction):
        if not name.startswith("load_") or function.__module__ != settings_module.__name__:
            continue
        required = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(required) != 1:
            continue
        # The names looked up before a SettingsError are recorded all the same.
        with contextlib.suppress(SettingsError):
            function(env)
    return env.looked_up


def env_vars_read_by_code() -> set[str]:
    return env_vars_in_source() | env_vars_looked_up_by_settings()


def exported_sample_names() -> set[str]:
    """Sample names of the daemon's real registry: counters' `_total`, histograms' `_bucket`..."""
    metrics = DaemonMetrics(EdgeBuffer(sealed_until=None))
    text = generate_latest(metrics.registry).decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert match is not None
            names.add(match.group(0))
    return names


def default_http_port() -> int:
    return load_daemon_settings({"GOLDMANE_TLS_INSECURE": "1"}).http_port


def console_scripts() -> set[str]:
    with (REPO / "pyproject.toml").open("rb") as file:
        return set(tomllib.load(file)["project"]["scripts"])


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


# --- the Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def dockerfile_args() -> dict[str, str]:
    args = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    return args


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"use the exec (JSON) form, not {arguments!r}"
    parsed = yaml.safe_load(arguments)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


# --- kustomize ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", kustomization_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_kustomization_lists_only_files_that_exist(path: Path) -> None:
    doc = kustomization(path.parent)
    assert doc["kind"] == "Kustomization"
    entries = [*doc.get("resources", []), *doc.get("components", [])]
    assert entries, f"{path} lists nothing"
    for entry in entries:
        target = path.parent / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), (
            f"{path.relative_to(REPO)} lists {entry}, which does not exist"
        )


def test_every_yaml_under_deploy_parses_and_every_manifest_is_listed() -> None:
    listed = {p.resolve() for k in kustomization_files() for p in resource_files(k.parent)}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        docs = load_yaml(path)
        assert docs, f"{path} is empty"
        is_manifest = any("apiVersion" in doc for doc in docs)
        if path.name == "kustomization.yaml" or not is_manifest:
            continue
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"
            assert doc["metadata"].get("name"), f"{path}: a {doc['kind']} without a name"
        assert path.resolve() in listed, f"{path.relative_to(REPO)} is in no kustomization"


def test_base_needs_no_custom_resource_definitions() -> None:
    """`kubectl apply -k deploy/` works on a cluster without cert-manager or Prometheus Operator."""
    groups = {doc["apiVersion"].split("/")[0] for doc in manifests()}
    assert groups <= {"v1", "apps", "batch", "networking.k8s.io"}, groups
    assert {doc["kind"] for doc in manifests()} >= {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "CronJob",
        "Service",
        "NetworkPolicy",
    }


@pytest.mark.parametrize("path", kustomization_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_kustomize_renders_each_kustomization(path: Path) -> None:
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kustomize:
        command = [kustomize, "build", str(path.parent)]
    elif kubectl:
        command = [kubectl, "kustomize", str(path.parent)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(manifests(path.parent))
    for doc in rendered:
        if doc["kind"] not in ("Namespace", "ClusterIssuer"):
            assert doc["metadata"].get("namespace") == "edge-aggregator", doc["metadata"]


# --- environment variables ------------------------------------------------------------------


def test_env_scan_finds_reads_made_directly_and_through_variables() -> None:
    read = env_vars_read_by_code()
    # Direct lookups of each command, and GOLDMANE_CA_FILE, whose name is held in a variable.
    assert {"DATABASE_URL", "HTTP_PORT", "SLACK_WEBHOOK_URL", "DRY_RUN", "GOLDMANE_CA_FILE"} <= read
    assert "GOLDMANE_CA_PATH" not in read


def test_every_env_var_the_manifests_set_is_read_by_the_code() -> None:
    read = env_vars_read_by_code()
    for workload in workloads():
        for container in containers(workload):
            assert "envFrom" not in container, "list variables by name, so they can be checked"
            unknown = set(env_of(container)) - read
            assert not unknown, (
                f"{workload['metadata']['name']}/{container['name']} sets {sorted(unknown)},"
                " which no code reads"
            )


# What the README's `kubectl create secret` commands put in each Secret, in their shape.
_SECRET_EXAMPLES: Final = {
    ("edge-aggregator-database", "url"): "postgresql://edges:PASSWORD@postgres:5432/edges",
    ("edges-digest-slack", "webhook-url"): "https://hooks.slack.com/services/T0/B0/x",
}


def _container_env(container: Doc, tmp_path: Path) -> _RecordingEnv:
    values = {}
    for name, item in env_of(container).items():
        if "value" in item:
            values[name] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            values[name] = _SECRET_EXAMPLES[(ref["name"], ref["key"])]
    for name in ("GOLDMANE_CA_FILE", "GOLDMANE_CERT_FILE", "GOLDMANE_KEY_FILE"):
        # The Secret's files exist only in the pod (their paths: a test of their own).
        values.setdefault(name, str(tmp_path / name))
        Path(values[name]).touch()
    return _RecordingEnv(values)


@pytest.mark.parametrize(
    ("workload", "load"),
    [
        (aggregator_deployment, load_daemon_settings),
        (digest_cronjob, load_digest_settings),
    ],
    ids=["edge-aggregator", "edges-digest"],
)
def test_each_command_accepts_its_manifests_settings_and_reads_every_one(
    workload: Callable[[], Doc], load: Callable[[Mapping[str, str]], object], tmp_path: Path
) -> None:
    (container,) = containers(workload())
    env = _container_env(container, tmp_path)
    load(env)  # raises SettingsError on a value the command refuses
    load_log_format(env)
    load_database_url(env)
    unread = set(env_of(container)) - env.looked_up
    assert not unread, f"{container['name']} sets {sorted(unread)}, which its command ignores"


def test_every_secret_key_the_pods_use_is_one_the_readme_creates() -> None:
    readme = (DEPLOY / "README.md").read_text()
    created = {
        (name, key)
        for name, options in re.findall(
            r"create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", readme
        )
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", options)
    }
    for workload in workloads():
        for container in containers(workload):
            for item in env_of(container).values():
                if "valueFrom" in item:
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) in created, ref
    assert set(_SECRET_EXAMPLES) <= created
    volumes = pod_spec(aggregator_deployment())["volumes"]
    for volume in volumes:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                assert (volume["secret"]["secretName"], item["key"]) in created, item


def test_dockerfile_sets_no_setting_the_code_does_not_read() -> None:
    read = env_vars_read_by_code()
    for instruction, arguments in dockerfile_instructions():
        if instruction != "ENV":
            continue
        for assignment in shlex.split(arguments):
            name = assignment.partition("=")[0]
            # Read by the shell, Python, pip and glibc's malloc rather than by the code.
            runtime = name in {"PATH", "MALLOC_ARENA_MAX"} or name.startswith(("PYTHON", "PIP_"))
            assert name in read or runtime, name


def test_the_benchmark_clients_run_with_the_image_s_malloc_arenas() -> None:
    image_env = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            image_env.update(item.split("=", 1) for item in shlex.split(arguments))
    # tests/bench is not a package: its constant is read off the source.
    source = ast.parse((REPO / "tests" / "bench" / "common.py").read_text(encoding="utf-8"))
    (benchmark_value,) = (
        node.value.value
        for node in source.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "IMAGE_MALLOC_ARENA_MAX"
        and isinstance(node.value, ast.Constant)
    )
    assert image_env["MALLOC_ARENA_MAX"] == benchmark_value


def test_goldmane_host_in_the_manifest_is_the_default_and_its_port_is_allowed_out() -> None:
    (container,) = containers(aggregator_deployment())
    host = env_of(container)["GOLDMANE_HOST"]["value"]
    assert host == DEFAULT_GOLDMANE_HOST
    _, port = parse_host_port("GOLDMANE_HOST", host)
    policy = one(manifests(), "NetworkPolicy", "edge-aggregator")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert port in ports


def test_secrets_come_from_secret_refs_not_literals() -> None:
    for workload in workloads():
        for container in containers(workload):
            for name in ("DATABASE_URL", "SLACK_WEBHOOK_URL"):
                if name in env_of(container):
                    item = env_of(container)[name]
                    assert "value" not in item and "secretKeyRef" in item["valueFrom"], name
    (digest,) = containers(digest_cronjob())
    assert {"DATABASE_URL", "SLACK_WEBHOOK_URL"} <= set(env_of(digest))
    (aggregator,) = containers(aggregator_deployment())
    assert "DATABASE_URL" in env_of(aggregator)
    assert env_of(aggregator)["LOG_FORMAT"]["value"] == "json"


# --- metrics and alerts ---------------------------------------------------------------------


def test_alerts_the_issue_names_exist_with_a_summary_and_a_runbook_section() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ISSUE_ALERTS
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    headings = {m.group(1).strip() for m in re.finditer(r"^###\s+(.+)$", readme, re.MULTILINE)}
    for rule in rules:
        name = rule["alert"]
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["runbook_url"] == f"deploy/README.md#{name.lower()}", name
        assert name in headings, f"deploy/README.md has no '### {name}' section"


def test_every_daemon_metric_an_alert_uses_is_exported() -> None:
    exported = exported_sample_names()
    used = {
        token
        for rule in alert_rules()
        for token in re.findall(r"\bedge_aggregator_[a-z0-9_]+", rule["expr"])
    }
    assert used, "the alerts use none of the daemon's metrics"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_other_metrics_in_alerts_are_kube_state_metrics_ones() -> None:
    used = {
        token for rule in alert_rules() for token in re.findall(r"\bkube_[a-z0-9_]+", rule["expr"])
    }
    assert used <= KUBE_STATE_METRICS, (
        f"not a kube-state-metrics series: {sorted(used - KUBE_STATE_METRICS)}"
    )


def test_alerts_name_the_objects_the_manifests_create() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert 'deployment="edge-aggregator"' in expressions["EdgeAggregatorDown"]
    assert aggregator_deployment()["metadata"]["name"] == "edge-aggregator"
    assert 'owner_name="edges-digest"' in expressions["EdgeDigestFailing"]
    assert digest_cronjob()["metadata"]["name"] == "edges-digest"


def test_failed_digest_jobs_outlive_the_alert_window() -> None:
    (expr,) = [r["expr"] for r in alert_rules() if r["alert"] == "EdgeDigestFailing"]
    match = re.search(r"kube_job_created\s*<\s*(\d+)", expr)
    assert match is not None
    window = int(match.group(1))
    assert window == 24 * 3600
    spec = digest_cronjob()["spec"]
    assert spec["failedJobsHistoryLimit"] >= 1
    assert spec["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] > window


def test_alert_rules_fire_as_the_runbook_says(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: the prometheus package)")
    rule = one(manifests(DEPLOY / "monitoring"), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    shutil.copy(DEPLOY / "monitoring" / "alerts-test.yaml", tmp_path)
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts-test.yaml"]):
        result = subprocess.run(
            [promtool, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_names_every_step_the_stream_failure_log_line_can_name() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for step in STEPS:
        assert f"`{step}`" in readme, step


# --- probes, ports and the certificate mount ------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_probes_hit_paths_the_health_server_answers() -> None:
    (container,) = containers(aggregator_deployment())
    liveness = container["livenessProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    reasons: list[str] = []
    metrics = DaemonMetrics(EdgeBuffer(sealed_until=None))
    server = HealthServer(
        host="127.0.0.1", port=0, registry=metrics.registry, readiness=lambda: reasons
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + liveness)[0] == 200
        assert _get(base + readiness)[0] == 200
        reasons.append("stream to Goldmane not connected")
        # Readiness follows the daemon's state; liveness does not, so an outage is no restart.
        assert _get(base + readiness)[0] == 503
        assert _get(base + liveness)[0] == 200
        service = one(manifests(), "Service", "edge-aggregator")
        status, body = _get(base + service["metadata"]["annotations"]["prometheus.io/path"])
        assert status == 200 and "edge_aggregator_flows_received_total" in body
    finally:
        server.close()


def test_probes_service_and_monitor_use_the_daemons_http_port() -> None:
    (container,) = containers(aggregator_deployment())
    assert "HTTP_PORT" not in env_of(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == default_http_port(), probe
    service = one(manifests(), "Service", "edge-aggregator")
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert ports.get(target, target) == default_http_port()
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(default_http_port())
    assert service["spec"]["selector"].items() <= pod_labels(aggregator_deployment()).items()
    monitor = one(manifests(DEPLOY / "monitoring"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_client_certificate_secret_is_mounted_at_the_default_paths() -> None:
    deployment = aggregator_deployment()
    (container,) = containers(deployment)
    assert not {"GOLDMANE_CA_FILE", "GOLDMANE_CERT_FILE", "GOLDMANE_KEY_FILE"} & set(
        env_of(container)
    )
    defaults = [Path(DEFAULT_CA_FILE), Path(DEFAULT_CERT_FILE), Path(DEFAULT_KEY_FILE)]
    (directory,) = {path.parent for path in defaults}
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if "secret" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert Path(mount["mountPath"]) == directory
    assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"
    assert {item["path"] for item in volume["secret"]["items"]} == {p.name for p in defaults}
    # cert-manager (way A) writes the same Secret, with the same keys.
    certificate = one(manifests(DEPLOY / "certificates"), "Certificate")
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
    assert {item["key"] for item in volume["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    assert "client auth" in certificate["spec"]["usages"]
    issuer = one(manifests(DEPLOY / "certificates"), "ClusterIssuer")
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert issuer["spec"]["ca"]["secretName"] == "tigera-ca-private"


# --- workload shape -------------------------------------------------------------------------


def test_aggregator_runs_one_replica_replaced_by_recreate() -> None:
    spec = aggregator_deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    # Kubernetes waits this long after SIGTERM; the daemon needs its shutdown budget.
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN_BUDGET_SECONDS


def test_digest_runs_daily_never_twice_at_once_and_fails_fast_where_a_retry_cannot_help() -> None:
    spec = digest_cronjob()["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    # A retry after the lock wait (EXIT_BUSY) would wait as long again, past the deadline.
    assert set(rule["onExitCodes"]["values"]) == {EXIT_USAGE, EXIT_SLACK_REJECTED, EXIT_BUSY}
    (container,) = containers(digest_cronjob())
    assert rule["onExitCodes"]["containerName"] == container["name"]


@pytest.mark.parametrize("name", ["edge-aggregator", "edges-digest"])
def test_pods_meet_the_restricted_pod_security_standard(name: str) -> None:
    (workload,) = [w for w in workloads() if w["metadata"]["name"] == name]
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in containers(workload):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    namespace = one(manifests(), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policies_allow_only_dns_goldmane_postgres_and_https_out() -> None:
    policies = [doc for doc in manifests() if doc["kind"] == "NetworkPolicy"]
    egress: dict[str, set[tuple[str, int]]] = {}
    for workload in workloads():
        labels = pod_labels(workload)
        (policy,) = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert "Egress" in policy["spec"]["policyTypes"]
        egress[workload["metadata"]["name"]] = {
            (port.get("protocol", "TCP"), port["port"])
            for rule in policy["spec"]["egress"]
            for port in rule["ports"]
        }
    for name, allowed in egress.items():
        assert allowed <= ALLOWED_EGRESS, name
        assert {("UDP", 53), ("TCP", 5432)} <= allowed, name
    assert ("TCP", 7443) in egress["edge-aggregator"]
    assert ("TCP", 443) not in egress["edge-aggregator"]
    assert ("TCP", 443) in egress["edges-digest"]
    assert ("TCP", 7443) not in egress["edges-digest"]


# --- the image ------------------------------------------------------------------------------


def test_image_is_multi_stage_on_a_slim_python_base() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    base = stages[-1][0][1]
    for name, value in dockerfile_args().items():
        base = base.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", base), base


def test_final_stage_runs_as_the_numeric_non_root_user_the_pods_expect() -> None:
    users = [args for instruction, args in dockerfile_stages()[-1] if instruction == "USER"]
    assert users, "the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric UID lets runAsNonRoot check it"
    for workload in workloads():
        context = pod_spec(workload)["securityContext"]
        assert context["runAsUser"] == int(uid), workload["metadata"]["name"]
        if gid:
            assert context["runAsGroup"] == int(gid), workload["metadata"]["name"]


def test_final_stage_installs_no_compiler() -> None:
    for instruction, arguments in dockerfile_stages()[-1]:
        if instruction == "RUN":
            assert not COMPILERS.search(arguments), arguments
            assert "apt-get install" not in arguments and "pip install" not in arguments


def test_image_does_not_install_the_embedded_postgresql() -> None:
    for instruction, arguments in dockerfile_instructions():
        if instruction == "RUN":
            assert "pgserver" not in arguments and "embedded" not in arguments, arguments
            # `pip install .[extra]` or `pkg.whl[extra]` would pull extras in.
            assert not re.search(r"pip install[^&;]*\[", arguments), arguments


def test_image_entry_points_are_console_scripts() -> None:
    scripts = console_scripts()
    final = dockerfile_stages()[-1]
    assert not [a for i, a in final if i == "ENTRYPOINT"], "no ENTRYPOINT: any command can run"
    (cmd,) = [exec_form(a) for i, a in final if i == "CMD"]
    assert cmd[0] in scripts
    for workload in workloads():
        for container in containers(workload):
            assert container["command"][0] in scripts, container["name"]
    # The build stage starts every command once, so a broken entry point fails the build.
    build_runs = " ".join(a for i, a in dockerfile_stages()[0] if i == "RUN")
    for script in scripts:
        assert f"/opt/venv/bin/{script} --help" in build_runs, script


def test_image_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for instruction, arguments in dockerfile_stages()[0]:
        if instruction == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source not in ignored, f".dockerignore drops {source}"


def test_manifests_use_the_image_tag_of_this_version() -> None:
    images = kustomization(DEPLOY)["images"]
    (image,) = images
    assert image["newTag"] == project_version()
    for workload in workloads():
        for container in containers(workload):
            name, _, tag = container["image"].partition(":")
            assert name == image["name"] and tag == project_version(), container["image"]
