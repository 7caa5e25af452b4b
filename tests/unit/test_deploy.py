"""Deployment files, checked structurally: no Docker engine or cluster is needed.

* ``deploy/docker/Dockerfile`` (+ ``.dockerignore``): multi-stage, non-root, health check,
  ``hitl-connector`` entry point, only existing and non-ignored files copied.
* ``docker-compose.yml``: the services, pinned images, unique host ports, bind mounts of files
  that exist, Prometheus/Grafana provisioning paths that line up with the mounts, every
  ``command:`` parsed by the real CLI parser, the connector's environment loaded by the real
  ``load_settings`` (unknown keys fail there) and accepted by ``check_runnable``, and the
  services' addresses agreeing with each other. ``docker compose config -q`` also runs when a
  compose plugin is installed (it needs no engine).
* ``deploy/k8s``: the base and the example overlay rendered by a real ``kustomize`` (pinned,
  from ``scripts/ensure_kustomize.sh``), then: one workload per role with the right
  ``--role``, probes on ``/healthz``/``/readyz``, resources, non-root security context, the
  ConfigMap's connector.yaml loaded with ``load_settings`` for every role, PDBs and Services
  selecting existing pods, Secret keys the code reads, and an HPA on the submitter keyed on
  ``hitl_connector_consumer_lag``; the transactional roles are StatefulSets whose pod names
  (hence transactional ids) survive a replacement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from connector.app import check_runnable, resolve_roles
from connector.cli import build_parser
from connector.config import BatchSettings, GatewaySettings, Settings, load_settings
from connector.kafka.clients import transactional_id
from connector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
RENDERS = {"base": K8S / "base", "example": K8S / "overlays" / "example"}
ROLES = ("submitter", "gateway", "resolver")
# Everything the connector reads from the environment outside the HITL_CONNECTOR_ settings.
SECRET_ENV = {"HITL_API_KEY", "HITL_WEBHOOK_SECRET", "HITL_CALLBACK_TOKEN_SECRET"}
CONNECTOR_IMAGE_SERVICES = {"topics", "sandbox", "connector", "loadgen"}
GATEWAY_PORT = GatewaySettings().port


# --------------------------------------------------------------------------- helpers


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The real ``hitl-connector`` parser; a bad flag fails the test instead of exiting."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"hitl-connector {shlex.join(argv)}: rejected by the CLI parser ({exc})")


def clean_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Only ``env`` of the connector's variables: none leaks in from the test's environment."""
    for name in list(os.environ):
        if name.startswith("HITL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def settings_for(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], config: Path | None = None
) -> Settings:
    clean_env(monkeypatch, env)
    return load_settings(config)


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr in dockerfile_instructions():
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def dockerfile_args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    args: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def image_user_uid() -> int:
    users = [rest for stage in dockerfile_stages()[-1:] for word, rest in stage if word == "USER"]
    assert users, "the final stage sets no USER"
    return int(users[-1].split(":")[0])


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            matched = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            matched = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if matched:
            excluded = not negate
    return excluded


def test_dockerfile_is_multi_stage_and_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    froms = [stage[0][1] for stage in stages]
    assert re.search(r"\bAS builder$", froms[0], re.IGNORECASE)
    base = dockerfile_args().get("PYTHON_IMAGE", "")
    final = froms[-1].split()[0].replace("${PYTHON_IMAGE}", base)
    assert final.startswith("python:3.11-slim"), final
    # The final stage takes only the built venv from the builder.
    copies = [rest for word, rest in stages[-1] if word == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not [rest for word, rest in stages[-1] if word == "RUN" and "pip install" in rest]


def test_dockerfile_installs_locked_runtime_deps_then_project_without_deps() -> None:
    runs = " ".join(rest for word, rest in dockerfile_stages()[0] if word == "RUN")
    assert "['project']['dependencies']" in runs  # the runtime subset, not the dev extras
    assert "-c requirements.lock" in runs
    assert "pip install --no-deps ." in runs
    assert "pip check" in runs


def test_dockerfile_runtime_contract() -> None:
    final = dockerfile_stages()[-1]
    by_word: dict[str, list[str]] = {}
    for word, rest in final:
        by_word.setdefault(word, []).append(rest)
    uid = image_user_uid()
    assert uid != 0
    assert json.loads(by_word["ENTRYPOINT"][-1]) == ["hitl-connector"]
    assert json.loads(by_word["CMD"][-1]) == ["run"]
    assert f"{GATEWAY_PORT}" in by_word["EXPOSE"][-1].split()
    (health,) = by_word["HEALTHCHECK"]
    options, _, cmd = health.partition("CMD ")
    assert "--start-period" in options
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"]  # slim has no curl
    assert "/healthz" in argv[2]
    assert f"'{GATEWAY_PORT}'" in argv[2]
    assert "HITL_CONNECTOR_GATEWAY__PORT" in argv[2]
    # The entry point is the one pyproject installs.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'hitl-connector = "connector.cli:main"' in pyproject


def test_dockerfile_copies_only_existing_files_the_context_keeps() -> None:
    for stage in dockerfile_stages():
        for word, rest in stage:
            if word != "COPY" or rest.startswith("--from"):
                continue
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not dockerignore_excludes(source), f"{source} is in .dockerignore"
    for private in (".venv", ".git", "var", "tests", "deploy/kafka/lib", ".env"):
        assert dockerignore_excludes(private), f"{private} would be sent to the build"
    assert not dockerignore_excludes("connector/cli.py")
    assert dockerignore_excludes("connector/__pycache__/cli.cpython-311.pyc")


# --------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any) -> Any:
    """Compose interpolation with an empty host environment: every variable needs a default."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if m.group(2) not in (":-", "-"):
            pytest.fail(f"${{{name}}} in docker-compose.yml has no default")
        return m.group(3)

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())  # resolves the << merge keys
    data: dict[str, Any] = interpolate(raw)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose["services"]
    return svc


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return [str(c) for c in cmd] if isinstance(cmd, list) else shlex.split(cmd)


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the bind mounts (short syntax)."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            out.append(((COMPOSE.parent / source).resolve(), target))
    return out


def host_path_for(service: dict[str, Any], container_path: str) -> Path:
    """The host path behind ``container_path`` through the service's bind mounts."""
    best: tuple[Path, str] | None = None
    for host, target in bind_mounts(service):
        inside = container_path == target or container_path.startswith(target.rstrip("/") + "/")
        if inside and (best is None or len(target) > len(best[1])):
            best = (host, target)
    assert best is not None, f"{container_path} is not bind-mounted"
    host, target = best
    return host / os.path.relpath(container_path, target)


def test_compose_services_and_images(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert set(services) == {
        "kafka",
        "topics",
        "sandbox",
        "connector",
        "prometheus",
        "grafana",
        "loadgen",
    }
    assert services["loadgen"]["profiles"] == ["load"]
    assert [name for name, s in services.items() if s.get("profiles")] == ["loadgen"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        if name in CONNECTOR_IMAGE_SERVICES:
            assert image == services["connector"]["image"]
            build = service["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        else:
            assert "build" not in service
    # The broker image is the Kafka version the tests run against (deploy/kafka/pom.xml).
    pom = ET.parse(ROOT / "deploy" / "kafka" / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.find("m:properties/m:kafka.version", ns)
    assert version is not None
    assert services["kafka"]["image"] == f"apache/kafka:{version.text}"
    for volume in compose.get("volumes", {}):
        assert any(
            str(v).split(":")[0] == volume for s in services.values() for v in s.get("volumes", [])
        ), f"volume {volume} is unused"


def test_compose_host_ports_unique(services: dict[str, dict[str, Any]]) -> None:
    published: list[int] = []
    for service in services.values():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) == 2, f"use HOST:CONTAINER, got {port}"
            published.append(int(parts[0]))
    assert len(published) == len(set(published)), published


def test_compose_bind_mounts_exist_and_named_volumes_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists(), f"{name}: {source} does not exist"
                assert ROOT in path.parents, f"{name}: {source} is outside the repo"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_compose_depends_on_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        deps = service.get("depends_on", {})
        items = deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)
        for dep, spec in items:
            assert dep in services, f"{name} depends on unknown {dep}"
            assert not services[dep].get("profiles"), f"{name} depends on a profiled service"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                check = services[dep].get("healthcheck", {})
                # Services of the connector image inherit the Dockerfile's HEALTHCHECK.
                assert "test" in check or dep in CONNECTOR_IMAGE_SERVICES, dep
                assert not check.get("disable"), f"{dep} is waited for but has no check"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", dep
    # One-shot jobs must not report unhealthy forever.
    for job in ("topics", "loadgen"):
        assert services[job]["healthcheck"] == {"disable": True}
    # The sandbox listens on 8765, not the image's 8080: it has its own check.
    assert "8765/sandbox/stats" in " ".join(services["sandbox"]["healthcheck"]["test"])


def test_compose_commands_parse_with_the_real_cli(services: dict[str, dict[str, Any]]) -> None:
    from hitl_sandbox.server import options_from_args

    dockerfile_cmd = ["run"]
    parsed = {}
    for name in sorted(CONNECTOR_IMAGE_SERVICES):
        service = services[name]
        argv = command_of(service) if "command" in service else dockerfile_cmd
        parsed[name] = parse_cli(argv)
    assert parsed["connector"].command == "run" and parsed["connector"].role == "all"
    assert (parsed["topics"].command, parsed["topics"].topics_command) == ("topics", "create")
    assert parsed["loadgen"].command == "loadgen"
    sandbox = parsed["sandbox"]
    assert sandbox.command == "sandbox"
    assert sandbox.host == "0.0.0.0"
    assert sandbox.auto_review
    options = options_from_args(sandbox)  # the sandbox accepts the parsed values
    assert options.webhook_secret
    assert sandbox.port in container_ports(services["sandbox"])


def test_compose_connector_environment_loads(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services["connector"])
    assert set(env) >= SECRET_ENV
    for name in env:
        assert name in SECRET_ENV or name.startswith("HITL_CONNECTOR_"), name
    settings = settings_for(monkeypatch, env)
    check_runnable(settings, resolve_roles("all"))
    # Every variable took effect (a misspelt nested key would fail in load_settings).
    assert settings.kafka.instance_id == "compose-connector"
    assert settings.gateway.signature == "required"
    assert settings.policy.enabled is True
    # The one-shot topic job reaches the same broker.
    topics = settings_for(monkeypatch, env_of(services["topics"]))
    assert topics.kafka.bootstrap_servers == settings.kafka.bootstrap_servers


def test_compose_addresses_agree(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services["connector"])
    settings = settings_for(monkeypatch, env)
    sandbox = parse_cli(command_of(services["sandbox"]))
    loadgen = parse_cli(command_of(services["loadgen"]))
    kafka_env = env_of(services["kafka"])
    advertised = {
        urlsplit(listener).netloc for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert settings.kafka.bootstrap_servers in advertised
    assert loadgen.bootstrap in advertised
    assert f"localhost:{next(iter(container_ports(services['kafka'])))}" in advertised
    assert "EXTERNAL" in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    # The connector calls the sandbox; the sandbox calls the connector back.
    base = urlsplit(settings.hitl.base_url)
    assert (base.hostname, base.port) == ("sandbox", sandbox.port)
    assert base.path == "/v1"
    public = urlsplit(settings.gateway.public_url or "")
    assert (public.hostname, public.port) == ("connector", settings.gateway.port)
    assert settings.gateway.port in container_ports(services["connector"])
    # Same loop, same signing secret on both sides.
    assert settings.loops.default in sandbox.preset_loops
    secrets = [s.get_secret_value() for s in settings.gateway.secrets]
    assert sandbox.webhook_secret in secrets
    assert sandbox.webhook_signature != "none"


def test_compose_prometheus_config_and_rules_mounted(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    config_path = "/etc/prometheus/prometheus.yml"  # the image's --config.file
    host_config = host_path_for(prometheus, config_path)
    assert host_config == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(host_config.read_text())
    for rule_file in config["rule_files"]:
        in_container = str(PurePosixPath(config_path).parent / rule_file)
        rules = host_path_for(prometheus, in_container)
        assert rules.is_file(), f"{rule_file} → {in_container} → {rules}"
        assert rules == ROOT / "deploy" / "prometheus" / "alerts.yml"
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    for target in targets:
        host, port = hostport(target)
        assert host in services and port in container_ports(services[host]), target


def test_compose_grafana_provisioning_paths(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    provisioning = host_path_for(grafana, "/etc/grafana/provisioning")  # GF_PATHS_PROVISIONING
    assert provisioning == ROOT / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "hitl-connector.yml").read_text())
    for provider in providers["providers"]:
        host_dir = host_path_for(grafana, provider["options"]["path"])
        assert host_dir == ROOT / "grafana" / "dashboards"
        assert list(host_dir.glob("*.json")), f"no dashboards in {host_dir}"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    for datasource in datasources["datasources"]:
        url = urlsplit(datasource["url"])
        assert url.hostname in services
        assert url.port in container_ports(services[url.hostname])


def test_docker_compose_config_validates() -> None:
    """The real validator, when installed: `docker compose config` needs no engine."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for cmd in candidates:
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            continue
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HITL_", "COMPOSE_"))}
        result = subprocess.run(
            [*cmd, "-f", str(COMPOSE), "--profile", "load", "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("no docker compose plugin or docker-compose on PATH")


# --------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="session")
def kustomize() -> str:
    """A real kustomize: ``KUSTOMIZE``, or the pinned one ``scripts/ensure_kustomize.sh`` caches."""
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "ensure_kustomize.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        message = f"no kustomize: {result.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def rendered(kustomize: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, path in RENDERS.items():
        result = subprocess.run(
            [kustomize, "build", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"kustomize build {path}: {result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(params=sorted(RENDERS))
def docs(
    request: pytest.FixtureRequest, rendered: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = rendered[request.param]
    return result


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


TRANSACTIONAL_ROLES = ("submitter", "resolver")


def deployments_by_role(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workload (Deployment or StatefulSet) of each role."""
    out = {}
    for deployment in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = parse_cli(container["args"])
        assert args.command == "run"
        assert deployment["metadata"]["name"].endswith(f"hitl-{args.role}")
        assert args.role not in out, f"two Deployments for {args.role}"
        out[args.role] = deployment
    assert set(out) == set(ROLES)
    return out


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = c
    return result


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def config_file(docs: list[dict[str, Any]], deployment: dict[str, Any], tmp: Path) -> Path:
    """The connector.yaml the pod sees at its ``--config`` path, written to ``tmp``."""
    c = container(deployment)
    args = parse_cli(c["args"])
    config_path = PurePosixPath(args.config)
    (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_path.parent]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_map = one(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    path = tmp / f"{deployment['metadata']['name']}.yaml"
    path.write_text(config_map["data"][config_path.name])
    return path


def test_k8s_one_deployment_per_role(docs: list[dict[str, Any]]) -> None:
    for role, deployment in deployments_by_role(docs).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
        assert pod_labels["app.kubernetes.io/component"] == role
        args = parse_cli(container(deployment)["args"])
        assert args.config == "/etc/hitl/connector.yaml"


def test_k8s_probes_resources_and_security(docs: list[dict[str, Any]]) -> None:
    for deployment in deployments_by_role(docs).values():
        c = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": GATEWAY_PORT}
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            get = c[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == GATEWAY_PORT
        resources = c["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == image_user_uid()
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Read-only root: /tmp is a writable emptyDir.
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]]
        assert pod["terminationGracePeriodSeconds"] > BatchSettings().shutdown_deadline_seconds
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(GATEWAY_PORT)


def test_k8s_config_and_secret_load_for_every_role(
    docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secret,) = of_kind(docs, "Secret")
    assert set(secret["stringData"]) == SECRET_ENV
    assert all("REPLACE-ME" in v for v in secret["stringData"].values())  # placeholders
    for role, deployment in deployments_by_role(docs).items():
        c = container(deployment)
        (env_from,) = c["envFrom"]
        assert env_from["secretRef"]["name"] == secret["metadata"]["name"]
        env = dict(secret["stringData"])
        for var in c.get("env", []):
            if var["name"] == "HITL_CONNECTOR_KAFKA__INSTANCE_ID":
                assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                # The pod name: <statefulset>-<ordinal>, or <deployment>-<hash>-<suffix>.
                suffix = "-1" if deployment["kind"] == "StatefulSet" else "-5d9f7c-x2x9q"
                env[var["name"]] = f"{deployment['metadata']['name']}{suffix}"
            else:
                env[var["name"]] = var["value"]
        assert "HITL_CONNECTOR_KAFKA__INSTANCE_ID" in env
        settings = settings_for(monkeypatch, env, config_file(docs, deployment, tmp_path))
        check_runnable(settings, resolve_roles(role))
        assert settings.kafka.instance_id.startswith(deployment["metadata"]["name"])
        assert settings.gateway.port == GATEWAY_PORT


def test_k8s_transactional_roles_keep_their_transactional_id_across_replacement(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replaced submitter/resolver pod must fence its predecessor: same transactional id.

    A StatefulSet names pods <name>-<ordinal> (a Deployment's get a random suffix), and the
    instance id (hence the transactional id) is the pod name."""
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for role, workload in deployments_by_role(docs).items():
        if role not in TRANSACTIONAL_ROLES:
            continue
        assert workload["kind"] == "StatefulSet", role
        governing = services[workload["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None"  # a StatefulSet needs it headless
        (var,) = [
            v
            for v in container(workload).get("env", [])
            if v["name"] == "HITL_CONNECTOR_KAFKA__INSTANCE_ID"
        ]
        assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        pod = f"{workload['metadata']['name']}-0"  # the replacement of pod 0 has this name too
        clean_env(monkeypatch, {"HITL_CONNECTOR_KAFKA__INSTANCE_ID": pod})
        kafka = load_settings(None).kafka
        assert transactional_id(kafka, role) == f"{kafka.group_id}-{role}-{pod}"


def test_k8s_pdbs_and_services_select_pods(docs: list[dict[str, Any]]) -> None:
    pods = {
        role: d["spec"]["template"]["metadata"]["labels"]
        for role, d in deployments_by_role(docs).items()
    }
    covered = set()
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert pdb["apiVersion"] == "policy/v1"
        matched = [
            r
            for r, labels in pods.items()
            if selects(pdb["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(matched) == 1, f"{pdb['metadata']['name']} selects {matched}"
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
        covered |= set(matched)
    assert covered == set(ROLES)
    deployments = deployments_by_role(docs)
    services = of_kind(docs, "Service")
    for service in services:
        matched = [r for r, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert matched, f"{service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for role in matched:
                names = {p["name"] for p in container(deployments[role])["ports"]}
                assert port["targetPort"] in names, (service["metadata"]["name"], role)
    (gateway,) = [s for s in services if s["metadata"]["name"].endswith("hitl-gateway")]
    assert [r for r, labels in pods.items() if selects(gateway["spec"]["selector"], labels)] == [
        "gateway"
    ]
    assert any(s["spec"].get("clusterIP") == "None" for s in services)  # per-pod metrics


def test_k8s_base_is_namespace_agnostic(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for doc in rendered["base"]:
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    assert not of_kind(rendered["base"], "HorizontalPodAutoscaler")


def test_k8s_example_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["example"]
    (namespace,) = of_kind(docs, "Namespace")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]
            assert doc["metadata"]["name"].startswith("example-")
    deployments = deployments_by_role(docs)
    for deployment in deployments.values():
        image = container(deployment)["image"]
        assert image.startswith("registry.example.com/hitl-kafka-connector:")
        assert not image.endswith(":latest")
    assert deployments["gateway"]["spec"]["replicas"] == 3
    assert "replicas" not in deployments["submitter"]["spec"]  # owned by the HPA


def test_k8s_hpa_scales_submitter_on_consumer_lag(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["example"]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    submitter = deployments_by_role(docs)["submitter"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", submitter["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    spec = metric[metric["type"].lower()]
    assert metric["type"] in ("External", "Pods")
    assert spec["metric"]["name"] == "hitl_connector_consumer_lag"
    assert spec["metric"]["selector"]["matchLabels"] == {"role": "submitter"}
    # The metric exists with that label (connector.metrics).
    metrics = Metrics(CollectorRegistry())
    metrics.consumer_lag.labels(role="submitter", topic="t", partition="0").set(1)
    samples = [s for f in metrics.registry.collect() for s in f.samples]
    assert any(
        s.name == "hitl_connector_consumer_lag" and s.labels["role"] == "submitter" for s in samples
    )
    # More submitters than input partitions would idle.
    clean_env(monkeypatch, {})
    settings = load_settings(config_file(docs, submitter, tmp_path))
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["maxReplicas"] <= settings.topics.partitions


def test_k8s_keda_example_matches_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    overlay = RENDERS["example"]
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert "keda-scaledobject.yaml" not in kustomization["resources"]  # HPA or KEDA, not both
    scaled = yaml.safe_load((overlay / "keda-scaledobject.yaml").read_text())
    assert scaled["kind"] == "ScaledObject"
    submitter = deployments_by_role(rendered["example"])["submitter"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == submitter["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == submitter["kind"]
    assert scaled["metadata"]["namespace"] == submitter["metadata"]["namespace"]
    (trigger,) = scaled["spec"]["triggers"]
    assert 'hitl_connector_consumer_lag{role="submitter"' in trigger["metadata"]["query"]


def _all_files(path: Path) -> Iterator[Path]:
    yield from (p for p in sorted(path.rglob("*")) if p.is_file())


def test_k8s_every_file_is_used_or_documented() -> None:
    for directory in RENDERS.values():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = set(kustomization.get("resources", []))
        for generator in kustomization.get("configMapGenerator", []):
            listed |= set(generator.get("files", []))
        listed.add("kustomization.yaml")
        extra = {p.name for p in _all_files(directory)} - listed
        assert extra <= {"keda-scaledobject.yaml"}, extra
