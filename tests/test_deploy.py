"""deploy/ and docker-compose.yml, checked without a Docker engine.

Each check runs the real tool. hadolint lints the Dockerfiles, the Compose CLI's `config`
validates the stack, and promtool checks the Prometheus config and the alert rules. The kafka
service's settings start a broker from the Kafka jars of the test suite. The live tests run
vistream with the stack's config against RTSP cameras and Kafka on 127.0.0.1, and Debian's
Prometheus scrapes it. Every dashboard query must return data, because a query that returns
nothing shows "No data" on the operator's screen.
scripts/install-deploy-tools.sh installs the tools, and a missing tool fails its test with that hint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from stream.config import load_config
from stream.metrics import Metrics
from tests.support.rtsp import RtspServer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
TOOLS_BIN = REPO_ROOT / ".cache" / "deploy-tools" / "bin"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "docker-compose.gpu.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "vistream.yml"
RULE_TESTS_FILE = DEPLOY / "prometheus" / "tests" / "vistream.test.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "vistream.json"
DATASOURCES_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "vistream.yml"
STACK_CONFIG = DEPLOY / "vistream" / "vistream.yml"
DOCKERFILES = ["deploy/Dockerfile", "deploy/Dockerfile.gpu", "deploy/camera/Dockerfile"]
STACK_SERVICES = {"kafka", "kafka-topics", "camera", "vistream", "prometheus", "grafana"}

# The live tests scrape every second, so a 10 s rate window contains about ten samples.
SCRAPE_INTERVAL_S = 1
RATE_WINDOW = "10s"
# Dashboard variables as Grafana expands them with "All" selected.
DASHBOARD_VARIABLES = {"$__rate_interval": RATE_WINDOW, "$instance": ".*", "$camera": ".*"}


# --- tools ---------------------------------------------------------------------------------


def tool(name: str) -> str:
    """Return the path of a validation tool, failing the test when it is not installed."""
    local = TOOLS_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found in {TOOLS_BIN} or on PATH; scripts/install-deploy-tools.sh installs hadolint, "
            "docker-compose, prometheus and promtool, and Java 17 comes with the Kafka test setup"
        )
    return found


def run_tool(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """Run a tool in the repository root and fail with its output when it exits non-zero."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    completed = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited with {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
        )
    return completed


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    run_tool(tool("hadolint"), "--no-color", "--failure-threshold", "style", dockerfile)


@pytest.mark.parametrize(
    ("dockerfile", "context"),
    [("deploy/Dockerfile", "."), ("deploy/Dockerfile.gpu", "."), ("deploy/camera/Dockerfile", "deploy/camera")],
)
def test_image_copies_existing_sources(dockerfile, context):
    """Every path that the image copies from its build context, as docker-compose.yml sets it, exists."""
    lines = (REPO_ROOT / dockerfile).read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ") and "--from=" not in line]

    assert copies, f"{dockerfile} copies nothing from the build context"
    for sources in copies:
        for source in sources:
            assert (REPO_ROOT / context / source).exists(), f"{dockerfile} copies {source}, which is missing in {context}"


def test_runtime_images_run_as_non_root():
    for dockerfile in DOCKERFILES:
        users = [line.split()[1] for line in (REPO_ROOT / dockerfile).read_text().splitlines() if line.startswith("USER ")]

        assert users, f"{dockerfile} sets no USER, so its container runs as root"
        assert users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile} ends with USER {users[-1]}"


# --- docker-compose.yml --------------------------------------------------------------------


def compose_config(*files: Path) -> dict:
    args = [tool("docker-compose")]
    for file in files:
        args += ["--file", str(file)]
    completed = run_tool(*args, "config", "--format", "json")
    return json.loads(completed.stdout)


def test_compose_stack_is_valid():
    config = compose_config(COMPOSE_FILE)

    assert set(config["services"]) == STACK_SERVICES
    assert config["services"]["vistream"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_compose_bind_mounts_exist():
    config = compose_config(COMPOSE_FILE, GPU_OVERRIDE)

    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"service {name} mounts {volume['source']}, which is missing"


def test_compose_publishes_ports_on_loopback_only():
    config = compose_config(COMPOSE_FILE)

    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"service {name} publishes {port} beyond 127.0.0.1"


def test_compose_gpu_override_is_valid():
    config = compose_config(COMPOSE_FILE, GPU_OVERRIDE)
    vistream = config["services"]["vistream"]
    devices = vistream["deploy"]["resources"]["reservations"]["devices"]
    prometheus_mounts = {volume["target"]: volume["source"] for volume in config["services"]["prometheus"]["volumes"]}

    assert set(config["services"]) == STACK_SERVICES
    assert vistream["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert prometheus_mounts["/etc/prometheus/targets/vistream.yml"] == str(
        DEPLOY / "prometheus" / "targets" / "vistream-gpu.yml"
    )


def test_stack_vistream_config_is_valid():
    config = load_config(STACK_CONFIG)

    assert [camera.camera_id for camera in config.cameras] == ["cam1", "cam2"]
    assert config.http.host == "0.0.0.0"
    assert config.http.port == 9108


def test_stack_cameras_are_the_simulator_paths():
    simulator = yaml.safe_load((DEPLOY / "camera" / "mediamtx.yml").read_text())
    cameras = yaml.safe_load(STACK_CONFIG.read_text())["cameras"]

    for camera in cameras:
        url = urllib.parse.urlsplit(camera["url"])
        assert url.netloc == "camera:8554", f"camera {camera['id']} is not on the simulator: {camera['url']}"
        assert url.path.lstrip("/") in simulator["paths"], f"the simulator serves no {url.path} for {camera['id']}"


def test_stack_publishes_to_the_created_topic():
    topics_command = compose_config(COMPOSE_FILE)["services"]["kafka-topics"]["command"]
    config = load_config(STACK_CONFIG)

    assert f"--topic={config.kafka.results.topic}" in topics_command
    assert config.kafka.bootstrap_servers == ["kafka:9092"]


# --- Kafka settings of the stack ------------------------------------------------------------

KAFKA_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"
KAFKA_JAVA_OPTS = [
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    f"-Dlog4j2.configurationFile={REPO_ROOT / 'scripts' / 'kafka' / 'log4j2.properties'}",
]


def kafka_properties(environment: dict[str, str], ports: dict[int, int], data: Path) -> str:
    """Translate KAFKA_* variables into server.properties as the apache/kafka image does.

    The image drops the prefix, lowercases the rest and maps ___ to "-", __ to "_" and _ to "."
    (docker/examples/README.md in the Kafka repository describes the mapping).
    Host names become 127.0.0.1 and each of the stack's ports becomes the free port in `ports`.
    """
    lines = [f"log.dirs={data}"]
    for key, value in environment.items():
        if not key.startswith("KAFKA_"):
            continue
        name = key.removeprefix("KAFKA_").lower().replace("___", "-").replace("__", "\0")
        name = name.replace("_", ".").replace("\0", "_")
        value = re.sub(r"(?:kafka|localhost)?:(\d+)", lambda match: f"127.0.0.1:{ports[int(match[1])]}", value)
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def test_compose_kafka_settings_start_a_broker(tmp_path):
    """The kafka service's settings run a KRaft broker, and kafka-topics creates the topic on it.

    No image runs here, so the broker comes from the jars of the same Kafka version that
    scripts/kafka.sh installs for the test suite.
    """
    run_tool("bash", "scripts/kafka.sh", "install", timeout_s=900)
    services = compose_config(COMPOSE_FILE)["services"]
    environment = services["kafka"]["environment"]
    stack_ports = {int(port) for value in environment.values() for port in re.findall(r":(\d+)", value)}
    ports = {port: free_port() for port in stack_ports}
    server_properties = tmp_path / "server.properties"
    server_properties.write_text(kafka_properties(environment, ports, tmp_path / "data"))
    java = [tool("java"), *KAFKA_JAVA_OPTS, "-cp", f"{KAFKA_LIBS}/*"]
    topics_args = [arg.replace("kafka:9092", f"127.0.0.1:{ports[9092]}") for arg in services["kafka-topics"]["command"]]

    run_tool(*java, "kafka.tools.StorageTool", "format", "--cluster-id", environment["CLUSTER_ID"],
             "--config", str(server_properties))
    broker_log = tmp_path / "broker.log"
    broker = start_process([*java, "kafka.Kafka", str(server_properties)], broker_log, tmp_path)
    try:
        # The admin client waits for the broker on its own, up to its 60 s API timeout.
        run_tool(*java, "org.apache.kafka.tools.TopicCommand", *topics_args, timeout_s=90)
        described = run_tool(
            *java, "org.apache.kafka.tools.TopicCommand", f"--bootstrap-server=127.0.0.1:{ports[9094]}",
            "--describe", "--topic=vistream.results",
        )
    finally:
        stop_process(broker)

    assert "--topic=vistream.results" in topics_args
    assert "PartitionCount: 3" in described.stdout


# --- Prometheus config and alert rules -----------------------------------------------------


def test_prometheus_config_is_valid():
    completed = run_tool(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))

    assert "1 rule files found" in completed.stdout


def test_alert_rules_are_valid():
    run_tool(tool("promtool"), "check", "rules", str(RULES_FILE))


def test_alert_rule_unit_tests_pass():
    run_tool(tool("promtool"), "test", "rules", str(RULE_TESTS_FILE))


def test_every_alert_has_a_firing_unit_test():
    rules = yaml.safe_load(RULES_FILE.read_text())
    tests = yaml.safe_load(RULE_TESTS_FILE.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }

    assert alerts - tested == set(), "alerts without a unit test in which they fire"


def test_gpu_targets_expect_a_gpu():
    cpu = yaml.safe_load((DEPLOY / "prometheus" / "targets" / "vistream.yml").read_text())
    gpu = yaml.safe_load((DEPLOY / "prometheus" / "targets" / "vistream-gpu.yml").read_text())

    assert cpu[0]["labels"] == {"accelerator": "cpu"}
    assert gpu[0]["labels"] == {"accelerator": "gpu"}
    assert cpu[0]["targets"] == gpu[0]["targets"]


# --- Grafana dashboard ---------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str

    @property
    def test_id(self) -> str:
        return f"{self.panel}/{self.ref_id}"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def data_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in data_panels(load_dashboard())
        for target in panel["targets"]
    ]


def expand_variables(expr: str) -> str:
    """Substitute the dashboard variables as Grafana would, and reject any variable left over."""
    for name in sorted(DASHBOARD_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, DASHBOARD_VARIABLES[name])
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}; add it to DASHBOARD_VARIABLES"
    return expr


def exported_sample_names() -> set[str]:
    """Sample names that vistream's metrics can export, such as vistream_x_total and vistream_y_bucket."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    families = Metrics().registry.collect()
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def test_dashboard_panels_are_well_formed():
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]

    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['title']} repeats a refId"


def test_dashboard_covers_the_operator_metrics():
    exprs = " ".join(query.expr for query in dashboard_queries())
    capture_panel = next(q.expr for q in dashboard_queries() if q.panel == "Capture to publish latency" and q.ref_id == "C")

    for metric in (
        "vistream_pipeline_frames_analysed_total",
        "vistream_source_frames_dropped_total",
        "vistream_source_camera_state",
        "vistream_pipeline_capture_to_publish_seconds_bucket",
        "vistream_model_inference_duration_seconds_bucket",
        "vistream_batcher_batch_size_frames_sum",
        "vistream_sink_results_total",
        "vistream_sink_buffer_fill_ratio",
        "vistream_model_info",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    assert capture_panel.startswith("histogram_quantile(0.99,")


def test_dashboard_and_alerts_use_exported_metrics():
    rules = yaml.safe_load(RULES_FILE.read_text())
    exprs = [query.expr for query in dashboard_queries()]
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exported = exported_sample_names()

    for expr in exprs:
        for name in re.findall(r"\bvistream_[a-z0-9_]+", expr):
            assert name in exported, f"{name} in {expr!r} is not a metric that vistream exports"


def test_dashboard_queries_parse(tmp_path):
    """promtool parses each query, as a recording rule, without a running Prometheus."""
    rules = [{"record": f"dashboard:query_{index}", "expr": expand_variables(query.expr)}
             for index, query in enumerate(dashboard_queries())]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    run_tool(tool("promtool"), "check", "rules", str(rules_file))


def test_grafana_provisioning_matches_the_stack():
    datasource = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"][0]
    provider = yaml.safe_load(DASHBOARD_PROVIDERS_FILE.read_text())["providers"][0]
    variable = next(v for v in load_dashboard()["templating"]["list"] if v["name"] == "datasource")
    grafana = compose_config(COMPOSE_FILE)["services"]["grafana"]
    mounts = {volume["target"]: volume["source"] for volume in grafana["volumes"]}
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])

    assert datasource["uid"] == variable["current"]["value"]
    assert datasource["url"] == "http://prometheus:9090"
    assert mounts[provider["options"]["path"]] == str(DASHBOARD_FILE.parent)
    assert Path(mounts[str(home.parent)]) / home.name == DASHBOARD_FILE


# --- the dashboard against a running vistream and Prometheus -------------------------------


@dataclass
class LiveStack:
    """The stack without containers, on 127.0.0.1, with Prometheus scraping vistream.

    vistream runs with deploy/vistream/vistream.yml. The test RTSP server plays the sample clip
    under the camera simulator's paths, and results go to the test suite's Kafka broker.
    """

    prometheus_url: str
    prometheus: subprocess.Popen
    prometheus_log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with log.open("wb") as output:
        return subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(check, condition: str, timeout_s: float, process: subprocess.Popen, log: Path):
    """Poll `check` until it returns a true value; fail with the process's log on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{condition}: the process exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            result = check()
        except (OSError, ValueError):  # not listening yet, or a reply cut short
            result = None
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{condition}: timed out after {timeout_s} s:\n{log.read_text()[-4000:]}")


def http_get_text(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def prometheus_query(base_url: str, expr: str) -> list[dict]:
    """Run an instant query through Prometheus's HTTP API and return its result vector."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        reply = json.loads(http_get_text(url))
    except urllib.error.HTTPError as error:
        pytest.fail(f"Prometheus rejected {expr!r}: {error.code} {error.read().decode()}")
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("VISTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        pytest.fail(
            "VISTREAM_KAFKA_BOOTSTRAP is not set; run the tests with `make test`, which starts Kafka "
            "on 127.0.0.1 and sets it"
        )
    return bootstrap


def stack_camera_mounts() -> dict[str, str]:
    """Map each camera id of the stack's vistream config to its RTSP path, such as /cam1."""
    cameras = yaml.safe_load(STACK_CONFIG.read_text())["cameras"]
    return {camera["id"]: urllib.parse.urlsplit(camera["url"]).path for camera in cameras}


def live_vistream_config(folder: Path, rtsp: RtspServer, http_port: int) -> Path:
    """The stack's vistream config, with cameras, /metrics and Kafka moved to 127.0.0.1."""
    config = yaml.safe_load(STACK_CONFIG.read_text())
    mounts = stack_camera_mounts()
    for camera in config["cameras"]:
        camera["url"] = rtsp.url(mounts[camera["id"]])
    config["http"] = {"host": "127.0.0.1", "port": http_port}
    config["kafka"]["bootstrap_servers"] = kafka_bootstrap()
    # One onnxruntime thread leaves a core for Prometheus and the RTSP server on a 2-core machine.
    config["model"]["intra_op_threads"] = 1
    path = folder / "vistream.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def live_prometheus_config(folder: Path, http_port: int) -> Path:
    """The stack's vistream job and rules, with the target on 127.0.0.1 and a 1 s scrape interval."""
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(job for job in deployed["scrape_configs"] if job["job_name"] == "vistream")
    targets_file = PROMETHEUS_CONFIG.parent / job.pop("file_sd_configs")[0]["files"][0]
    labels = yaml.safe_load(targets_file.read_text())[0]["labels"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{http_port}"], "labels": labels}]
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in deployed["rule_files"]],
        "scrape_configs": [job],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory, sample_video, builtin_model) -> Iterator[LiveStack]:
    folder = tmp_path_factory.mktemp("live-stack")
    http_port, prometheus_port = free_port(), free_port()
    vistream_log, prometheus_log = folder / "vistream.log", folder / "prometheus.log"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    mounts = {path: sample_video for path in stack_camera_mounts().values()}
    with contextlib.ExitStack() as stack:
        rtsp = stack.enter_context(RtspServer(0, mounts, log_path=folder / "rtsp.log"))
        vistream = start_process(
            [sys.executable, "-m", "stream.cli", "run", "--config", str(live_vistream_config(folder, rtsp, http_port))],
            vistream_log,
            folder,
        )
        stack.callback(stop_process, vistream)
        wait_until(
            lambda: "vistream_model_info{" in http_get_text(f"http://127.0.0.1:{http_port}/metrics"),
            "vistream serves /metrics with the model loaded", 120, vistream, vistream_log,
        )

        prometheus = start_process(
            [
                tool("prometheus"),
                f"--config.file={live_prometheus_config(folder, http_port)}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            prometheus_log,
            folder,
        )
        stack.callback(stop_process, prometheus)
        # A rate over RATE_WINDOW needs the window filled with scrapes.
        wait_until(
            lambda: prometheus_query(prometheus_url, 'count_over_time(up{job="vistream"}[1m]) >= 15 and up == 1'),
            "Prometheus has scraped vistream for 15 s", 90, prometheus, prometheus_log,
        )
        yield LiveStack(prometheus_url, prometheus, prometheus_log)


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda query: query.test_id)
def test_dashboard_query_returns_data(live_stack, query):
    expr = expand_variables(query.expr)
    result = prometheus_query(live_stack.prometheus_url, expr)
    values = [float(sample["value"][1]) for sample in result]

    assert result, f"panel {query.panel!r} query {query.ref_id} returned no series: {expr}"
    assert any(not math.isnan(value) for value in values), f"panel {query.panel!r} query {query.ref_id} returned only NaN: {expr}"


def test_alert_rules_evaluate_on_live_metrics(live_stack):
    expected = sum(len(group["rules"]) for group in yaml.safe_load(RULES_FILE.read_text())["groups"])

    def evaluated_rules() -> list[dict]:
        groups = json.loads(http_get_text(f"{live_stack.prometheus_url}/api/v1/rules"))["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Prometheus reports the zero time until a rule's first evaluation.
        return rules if all(not rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    rules = wait_until(evaluated_rules, "every rule evaluated once", 30, live_stack.prometheus, live_stack.prometheus_log)

    assert len(rules) == expected
    for rule in rules:
        assert rule["health"] == "ok", f"rule {rule['name']} failed: {rule.get('lastError')}"
