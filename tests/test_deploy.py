"""The deployment files under deploy/: checked against the worker's real settings, and the
worker Deployment's command line run for real.

The suite runs without a Docker daemon or a Kubernetes cluster (the docker and kubectl clients
alone), so no container is started here. Instead:

- every Kubernetes manifest is validated offline against the Kubernetes API schemas
  (kubernetes-validate, pinned to :data:`K8S_VERSION`, strict: unknown fields fail), and
  rendered with ``kubectl kustomize`` where kubectl is installed; KEDA's objects are validated
  against a schema of the fields they use;
- the Dockerfile, the compose file and the systemd unit are parsed and checked;
- every ``AIOQUEUE_*`` variable and ``--flag`` they use goes through the real parsers
  (``aioqueue.cli.parse_args``, ``aioqueue web``'s), so a renamed flag or variable fails here;
- the worker Deployment's arguments and environment, resolved as the kubelet resolves them
  (ConfigMap, Secret, ``$(VAR)``), run ``aioqueue-worker`` against a local redis-server that
  requires the Secret's password: a job completes, the probes' paths answer 200 on the
  configured port, the image's HEALTHCHECK passes, and SIGTERM exits 0.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import redis
import yaml  # type: ignore[import-untyped]

from aioqueue import Queue
from aioqueue._imports import import_queue
from aioqueue.cli import parse_args
from aioqueue.testing import RedisServer
from aioqueue.web import cli as web_cli
from aioqueue.worker import WorkerSettings
from aioqueue.worker.settings import OPTIONS
from examples import demo_tasks
from tests._async import eventually

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes release the manifests promise to run on

#: What ``aioqueue-worker`` reads: its flags and their variables (aioqueue/worker/settings.py).
WORKER_ENV = {s.env for s in OPTIONS}
WORKER_FLAGS = {s.flag for s in OPTIONS} | {"--no-" + s.flag[2:] for s in OPTIONS if s.kind is bool}
#: What ``aioqueue web`` reads: the options of its parser, the variables its module names.
WEB_FLAGS = {o for action in web_cli.parser()._actions for o in action.option_strings}
WEB_ENV = set(re.findall(r"\bAIOQUEUE_[A-Z_]+\b", Path(web_cli.__file__).read_text()))


# -- reading the files ------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file (a fresh copy each call: tests may change theirs)."""
    return copy.deepcopy(_yaml_docs(path))


@functools.cache
def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the base manifests and the KEDA ones, by (kind, name)."""
    found = {}
    for path in sorted([*K8S.glob("*.yaml"), *(K8S / "keda").glob("*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_docs(path):
            assert {"kind", "metadata"} <= doc.keys(), f"{path.name}: not a Kubernetes object"
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of each instruction of deploy/Dockerfile, continuations joined."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage (what the image is)."""
    instructions = dockerfile()
    start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[start:]


def one(instructions: list[tuple[str, str]], op: str) -> str:
    found = [rest for o, rest in instructions if o == op]
    assert len(found) == 1, f"expected one {op}, got {found}"
    return found[0]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in final_stage():
        if op == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def image_entrypoint() -> list[str]:
    return list(json.loads(one(final_stage(), "ENTRYPOINT")))


def image_cmd() -> list[str]:
    return list(json.loads(one(final_stage(), "CMD")))


def image_healthcheck() -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    rest = one(final_stage(), "HEALTHCHECK")
    return list(json.loads(rest[rest.index(" CMD ") + 5 :]))


def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "docker-compose.yml")
    return doc


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as docker compose's .env and systemd's EnvironmentFile= read them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


_COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, through nested values."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        if variables.get(name):
            return variables[name]
        assert op == ":-", f"${{{name}}} is not set in deploy/.env.example"
        return str(arg)

    return _COMPOSE_VAR.sub(sub, value)


def systemd_unit() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat) of deploy/systemd/aioqueue-worker.service."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "aioqueue-worker.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(objects: dict[tuple[str, str], dict[str, Any]], deployment: str) -> dict[str, Any]:
    (c,) = pod_spec(objects["Deployment", deployment])["containers"]
    return c  # type: ignore[no-any-return]


_K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(
    objects: dict[tuple[str, str], dict[str, Any]],
    c: dict[str, Any],
    config_overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env in order,
    each value's $(VAR) expanded from the variables before it (unknown ones left as they are)."""

    def source(kind: str, name: str) -> dict[str, str]:
        obj = objects[kind, name]
        data = dict(obj.get("stringData") or obj.get("data") or {})
        if kind == "ConfigMap":
            data.update(config_overrides or {})
        return data

    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(source("ConfigMap", ref["configMapRef"]["name"]))
        if "secretRef" in ref:
            env.update(source("Secret", ref["secretRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = _K8S_VAR.sub(
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                var["value"],
            )
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = source("Secret", ref["name"])[ref["key"]]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = source("ConfigMap", ref["name"])[ref["key"]]
        else:
            raise AssertionError(f"no resolver for {var}")
    return env


def k8s_argv(c: dict[str, Any]) -> list[str]:
    """The container's command line: Kubernetes' command/args over the image's ENTRYPOINT/CMD."""
    if "command" in c:
        return [*c["command"], *c.get("args", [])]
    return [*image_entrypoint(), *c.get("args", image_cmd())]


def compose_argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", image_entrypoint())
    command = service.get("command", [] if "entrypoint" in service else image_cmd())
    return [*entrypoint, *command]


def program(argv: list[str]) -> str:
    """``worker`` or ``web``: which of aioqueue's commands ``argv`` runs."""
    name = Path(argv[0]).name
    if name == "aioqueue-worker" or argv[:2] == ["aioqueue", "worker"]:
        return "worker"
    if name == "aioqueue-web" or argv[:2] == ["aioqueue", "web"]:
        return "web"
    raise AssertionError(f"not an aioqueue command: {argv}")


def worker_args(argv: list[str]) -> list[str]:
    return argv[2:] if argv[:2] == ["aioqueue", "worker"] else argv[1:]


def worker_settings(argv: list[str], env: Mapping[str, str]) -> WorkerSettings:
    """The settings ``argv`` and ``env`` give, through the worker's own parser."""
    args = worker_args(argv)
    unknown = [a for a in args if a.startswith("--") and a.split("=")[0] not in WORKER_FLAGS]
    assert not unknown, f"flags aioqueue-worker does not have: {unknown}"
    return parse_args(args, environ=env).settings


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def seconds(text: str) -> float:
    """``60``, ``60s``, ``1m30s``, ``1min`` as seconds (compose and systemd durations)."""
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def drain_bound(s: WorkerSettings) -> float:
    """The longest a SIGTERMed worker may take to exit (aioqueue/worker/supervisor.py's
    ``_drain``): settle a claim in flight and write the outcomes (up to ``max(5, lease)`` each),
    the grace period, the children's ``kill_grace``, and 2 s to deregister."""
    return s.grace + 2 * max(5.0, s.lease) + s.kill_grace + 2.0


# -- every variable and flag exists -----------------------------------------------------------


def deploy_files() -> Iterator[Path]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != ".gitignore":
            yield path


def test_every_aioqueue_variable_is_read_by_a_command() -> None:
    """Each AIOQUEUE_* name in deploy/ is a variable the worker or `aioqueue web` reads."""
    for path in deploy_files():
        names = set(re.findall(r"\bAIOQUEUE_[A-Z0-9_]+\b", path.read_text()))
        unknown = names - WORKER_ENV - WEB_ENV
        assert not unknown, f"{path.relative_to(ROOT)}: no command reads {sorted(unknown)}"


def command_lines() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """(where, argv, environment) of every aioqueue command the files start."""
    env = image_env()
    yield "Dockerfile", [*image_entrypoint(), *image_cmd()], env
    variables = env_file(DEPLOY / ".env.example")
    for name, service in interpolate(compose()["services"], variables).items():
        if "image" in service and service["image"].startswith("aioqueue"):
            yield f"compose {name}", compose_argv(service), {**env, **service["environment"]}
    objects = k8s_objects()
    for (kind, name), obj in objects.items():
        if kind == "Deployment":
            for c in pod_spec(obj)["containers"]:
                if c["image"].split(":")[0] == "aioqueue":
                    yield f"k8s {name}", k8s_argv(c), {**env, **container_env(objects, c)}
    unit_env = env_file(DEPLOY / "systemd" / "aioqueue-worker.env.example")
    (exec_start,) = systemd_unit()["Service"]["ExecStart"]
    argv = [unit_env.get(m[2:-1], m) if m.startswith("${") else m for m in shlex.split(exec_start)]
    yield "systemd", argv, unit_env


COMMAND_LINES = list(command_lines())


@pytest.mark.parametrize("where, argv, env", COMMAND_LINES, ids=[w for w, _, _ in COMMAND_LINES])
def test_command_lines_parse(
    where: str, argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command line, with its environment, goes through its command's own parser: unknown
    flags, bad values and a web server without its token fail; demo specs import."""
    if program(argv) == "worker":
        worker_settings(argv, env)
        (spec,) = [a for a in worker_args(argv) if not a.startswith("-")]
    else:
        args = argv[2:] if argv[0] == "aioqueue" else argv[1:]
        unknown = [a for a in args if a.startswith("--") and a not in WEB_FLAGS]
        assert not unknown, f"{where}: flags aioqueue web does not have: {unknown}"
        for name in [n for n in os.environ if n.startswith("AIOQUEUE_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("AIOQUEUE_"):
                monkeypatch.setenv(name, value)
        web_cli.settings_from(web_cli.parser().parse_args(args))
        spec = args[args.index("--tasks") + 1]
    assert re.fullmatch(r"[\w.]+:[\w.]+", spec), f"{where}: {spec!r} is not MODULE:ATTR"
    if spec.startswith("examples."):
        assert import_queue(spec) is demo_tasks.queue


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_builds_a_small_non_root_worker_image() -> None:
    """Slim Python base, aioqueue[web] from wheels, the examples, a numeric non-root user,
    aioqueue-worker as entrypoint, health on every interface at the exposed port."""
    stages = [rest for op, rest in dockerfile() if op == "FROM"]
    assert all(s.split()[0] == "python:3.12-slim" for s in stages), stages
    stage = final_stage()
    runs = " ".join(rest for op, rest in stage if op == "RUN")
    assert "'aioqueue[web]'" in runs and "--no-index" in runs and "--no-cache-dir" in runs
    assert any(op == "COPY" and rest.split()[0] == "examples" for op, rest in stage)
    user = one(stage, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid"
    assert image_entrypoint() == ["aioqueue-worker"]
    env = image_env()
    assert env["AIOQUEUE_METRICS_HOST"] == "0.0.0.0"
    assert one(stage, "EXPOSE") == env["AIOQUEUE_METRICS_PORT"]
    assert one(stage, "STOPSIGNAL") == "SIGTERM"
    assert "/health/ready" in " ".join(image_healthcheck())
    # The build context is the repository root: its ignore file keeps what the stages COPY.
    kept = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copied = {
        src
        for op, rest in dockerfile()
        if op == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert copied <= set(kept), f"COPY sources the ignore file drops: {copied - set(kept)}"


# -- docker compose -----------------------------------------------------------------------------


def test_compose_redis_persists_and_never_evicts() -> None:
    """Redis has AOF on, noeviction, the password from the env file, a volume, a healthcheck
    that needs the password; workers scale; every service has a healthcheck."""
    services = compose()["services"]
    command = services["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"].startswith("${REDIS_PASSWORD")
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "worker must scale"
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("worker", "web"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # The worker's check is the image's; the web server's is its own (the image's is for workers).
    assert worker["healthcheck"]["test"] == ["CMD", *image_healthcheck()]
    assert services["web"]["healthcheck"]["test"] != worker["healthcheck"]["test"]


def test_compose_variables_come_from_the_env_example() -> None:
    """Every ${VAR} the compose file uses is in deploy/.env.example or has a default, and the
    URLs it builds carry that password to the redis service."""
    variables = env_file(DEPLOY / ".env.example")
    services = interpolate(compose()["services"], variables)  # fails on a missing variable
    for name in ("worker", "web"):
        url = services[name]["environment"]["AIOQUEUE_REDIS_URL"]
        assert url == f"redis://:{variables['REDIS_PASSWORD']}@redis:6379/0"
    assert services["redis"]["command"][-1] == variables["REDIS_PASSWORD"]


# -- Kubernetes ---------------------------------------------------------------------------------


def base_manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in yaml_docs(path):
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


BASE_MANIFESTS = list(base_manifests())


@pytest.mark.parametrize("where, doc", BASE_MANIFESTS, ids=[w for w, _ in BASE_MANIFESTS])
def test_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any]) -> None:
    """Each manifest passes the Kubernetes API schema of K8S_VERSION, strictly (no unknown
    fields), offline."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """The base kustomization applies every file beside it; KEDA's applies its own."""
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(base["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    keda = yaml.safe_load((K8S / "keda" / "kustomization.yaml").read_text())
    assert keda["namespace"] == base["namespace"]
    assert keda["resources"] == ["scaledobject.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_valid_objects_in_one_namespace() -> None:
    """`kubectl kustomize` renders the base and the KEDA overlay (client-side, no cluster): each
    object lands in the namespace, the image gets its tag, and the result is valid Kubernetes."""
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    for path, expected_kinds in ((K8S, 10), (K8S / "keda", 2)):
        out = subprocess.run(
            ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert len(docs) == expected_kinds
        for doc in docs:
            if doc["kind"] == "Namespace":
                assert doc["metadata"]["name"] == namespace
            else:
                assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
            if not doc["apiVersion"].startswith("keda.sh/"):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert ":" in c["image"], f"untagged image {c['image']}"


def test_redis_is_persistent_never_evicts_and_needs_the_secret() -> None:
    """One Redis pod (Recreate) with AOF on its claim's volume, noeviction, maxmemory below its
    memory limit, the Secret's password; the Service is redis-svc, as the ConfigMap says."""
    objects = k8s_objects()
    deployment = objects["Deployment", "redis"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    c = container(objects, "redis")
    args = c["args"]
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"] == "$(REDIS_PASSWORD)"
    secret = objects["Secret", "aioqueue-secrets"]["stringData"]
    env = container_env(objects, c)
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == secret["redis-password"]
    (mount,) = c["volumeMounts"]
    assert pairs["--dir"] == mount["mountPath"]
    (volume,) = pod_spec(deployment)["volumes"]
    assert volume["name"] == mount["name"]
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in objects
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and pairs["--maxmemory"].endswith("mb")
    assert int(pairs["--maxmemory"][:-2]) < int(limit[:-2]) * 1024
    service = objects["Service", "redis-svc"]
    assert service["spec"]["type"] == "ClusterIP"
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    config = objects["ConfigMap", "aioqueue-config"]["data"]
    assert config["REDIS_HOST"] == "redis-svc"
    assert str(service["spec"]["ports"][0]["port"]) == config["REDIS_PORT"]


def test_secret_is_a_marked_placeholder_and_stays_out_of_the_configmap() -> None:
    """The Secret's values say to replace them; the password is URL-safe (it goes into a
    redis:// URL); no secret value sits in the ConfigMap."""
    objects = k8s_objects()
    secret = objects["Secret", "aioqueue-secrets"]["stringData"]
    assert all("REPLACE" in v for v in secret.values())
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", secret["redis-password"])
    config = objects["ConfigMap", "aioqueue-config"]["data"]
    assert not any(v in config.values() for v in secret.values())


def worker_deployment() -> tuple[dict[str, Any], dict[str, Any], dict[str, str], WorkerSettings]:
    objects = k8s_objects()
    deployment = objects["Deployment", "aioqueue-worker"]
    c = container(objects, "aioqueue-worker")
    env = {**image_env(), **container_env(objects, c)}
    return deployment, c, env, worker_settings(k8s_argv(c), env)


def test_worker_probes_match_the_health_endpoints() -> None:
    """Liveness on /health/live and readiness on /health/ready, both on the port the worker
    serves them on (AIOQUEUE_METRICS_PORT), listening on every interface."""
    deployment, c, _, settings = worker_deployment()
    assert settings.metrics_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == settings.metrics_port
        assert c[probe]["timeoutSeconds"] >= 1
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)


def test_worker_cpu_request_matches_processes_and_pods_spread() -> None:
    """The CPU request equals the children started (AIOQUEUE_PROCESSES); at least two replicas,
    spread over nodes; the disruption budget covers the same pods."""
    deployment, c, _, settings = worker_deployment()
    assert cpu_cores(c["resources"]["requests"]["cpu"]) == settings.processes
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = pod_spec(deployment)
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    (anti,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = k8s_objects()["PodDisruptionBudget", "aioqueue-worker"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def stop_timeouts() -> Iterator[tuple[str, float, WorkerSettings]]:
    """(where, seconds before SIGKILL, the worker's settings there) for each way it runs."""
    deployment, _, _, settings = worker_deployment()
    yield "k8s", pod_spec(deployment)["terminationGracePeriodSeconds"], settings
    variables = env_file(DEPLOY / ".env.example")
    worker = interpolate(compose()["services"]["worker"], variables)
    env = {**image_env(), **worker["environment"]}
    yield (
        "compose",
        seconds(worker["stop_grace_period"]),
        worker_settings(compose_argv(worker), env),
    )
    unit = systemd_unit()["Service"]
    env = env_file(DEPLOY / "systemd" / "aioqueue-worker.env.example")
    argv = ["aioqueue-worker", env["WORKER_SPEC"]]
    yield "systemd", seconds(unit["TimeoutStopSec"][-1]), worker_settings(argv, env)


def test_stop_timeouts_outlast_the_drain() -> None:
    """Kubernetes' terminationGracePeriodSeconds, compose's stop_grace_period and systemd's
    TimeoutStopSec each exceed the grace period plus the drain's own steps, so SIGKILL never
    cuts a drain short."""
    for where, timeout, settings in stop_timeouts():
        assert timeout > drain_bound(settings) > settings.grace, (where, timeout, settings.grace)


def test_web_dispatcher_is_served_and_guarded() -> None:
    """The dispatcher listens on every interface with the Secret's token, behind a Service
    whose target port is the container's, and its probes use the token-free page."""
    objects = k8s_objects()
    c = container(objects, "aioqueue-web")
    env = container_env(objects, c)
    secret = objects["Secret", "aioqueue-secrets"]["stringData"]
    assert env["AIOQUEUE_WEB_TOKEN"] == secret["web-token"]
    args = c["args"]
    port = int(args[args.index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    service = objects["Service", "aioqueue-web"]
    assert ports[service["spec"]["ports"][0]["targetPort"]] == port
    from aioqueue.web.app import create_app

    served = {getattr(r, "path", None) for r in create_app().routes}
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        assert c[probe]["httpGet"]["path"] == path and path in served
        assert ports[c[probe]["httpGet"]["port"]] == port


# -- KEDA ---------------------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _NAME, "namespace": _NAME, "labels": {"type": "object"}},
    "additionalProperties": False,
}
#: The fields of keda.sh/v1alpha1 ScaledObject and TriggerAuthentication these files use, as
#: KEDA 2.x documents them; anything else (a typo) fails.
KEDA_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"const": "keda.sh/v1alpha1"},
                "kind": {"const": "ScaledObject"},
                "metadata": _METADATA,
                "spec": {
                    "type": "object",
                    "required": ["scaleTargetRef", "triggers"],
                    "additionalProperties": False,
                    "properties": {
                        "scaleTargetRef": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "name": _NAME,
                            },
                        },
                        "minReplicaCount": {"type": "integer", "minimum": 0},
                        "maxReplicaCount": {"type": "integer", "minimum": 1},
                        "pollingInterval": {"type": "integer", "minimum": 1},
                        "cooldownPeriod": {"type": "integer", "minimum": 0},
                        "advanced": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "horizontalPodAutoscalerConfig": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"behavior": {"type": "object"}},
                                }
                            },
                        },
                        "triggers": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["type", "metadata"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "metadata": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "authenticationRef": {
                                        "type": "object",
                                        "required": ["name"],
                                        "additionalProperties": False,
                                        "properties": {"name": _NAME, "kind": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"const": "keda.sh/v1alpha1"},
                "kind": {"const": "TriggerAuthentication"},
                "metadata": _METADATA,
                "spec": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "secretTargetRef": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["parameter", "name", "key"],
                                "additionalProperties": False,
                                "properties": {
                                    "parameter": {"type": "string"},
                                    "name": _NAME,
                                    "key": {"type": "string"},
                                },
                            },
                        }
                    },
                },
            },
        },
    ]
}
#: The redis scaler's metadata keys (KEDA 2.x, pkg/scalers/redis_scaler.go).
REDIS_SCALER_KEYS = {
    "address", "addressFromEnv", "host", "port", "databaseIndex", "listName", "listLength",
    "activationListLength", "enableTLS", "unsafeSsl", "username", "passwordFromEnv",
}  # fmt: skip


def test_keda_scales_the_workers_on_the_pending_jobs() -> None:
    """The ScaledObject and TriggerAuthentication fit their schema; the scaler watches this
    queue's ready jobs on redis-svc by its full name in the namespace, with the Secret's
    password, and keeps at least the Deployment's replicas."""
    objects = k8s_objects()
    keda = {k: v for k, v in objects.items() if v["apiVersion"].startswith("keda.sh/")}
    assert {kind for kind, _ in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda.values():
        jsonschema.validate(obj, KEDA_SCHEMA)
    scaled = objects["ScaledObject", "aioqueue-worker"]["spec"]
    deployment = objects["Deployment", "aioqueue-worker"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["minReplicaCount"] == deployment["spec"]["replicas"] >= 2
    assert scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert set(meta) <= REDIS_SCALER_KEYS
    assert meta["listName"] == demo_tasks.queue.keys.pending
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    config = objects["ConfigMap", "aioqueue-config"]["data"]
    host = f"{config['REDIS_HOST']}.{namespace}.svc.cluster.local"
    assert meta["address"] == f"{host}:{config['REDIS_PORT']}"
    assert meta["databaseIndex"] == config["REDIS_DB"]
    auth = objects["TriggerAuthentication", trigger["authenticationRef"]["name"]]["spec"]
    (ref,) = auth["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert ref["key"] in objects["Secret", ref["name"]]["stringData"]


# -- systemd ------------------------------------------------------------------------------------


def test_systemd_unit_drains_restarts_and_is_hardened() -> None:
    """SIGTERM to the supervisor alone (KillMode=mixed, so the children keep running their jobs
    through the drain), restart on failure, a non-root user, settings from the env file, and
    the sandboxing options."""
    unit = systemd_unit()
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root", "0")
    assert service["EnvironmentFile"].startswith("/etc/")
    assert Path(shlex.split(service["ExecStart"])[0]).name == "aioqueue-worker"
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert service[key] == value, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong (ExecStart pointed at the installed
    aioqueue-worker, since /opt/aioqueue is not there)."""
    unit = (DEPLOY / "systemd" / "aioqueue-worker.service").read_text()
    script = Path(sys.executable).parent / "aioqueue-worker"
    path = tmp_path / "aioqueue-worker.service"
    path.write_text(unit.replace("/opt/aioqueue/venv/bin/aioqueue-worker", str(script)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


# -- the worker Deployment, run for real --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, capture_output=True, timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def password_redis() -> Iterator[tuple[RedisServer, str]]:
    """A private redis-server that requires the k8s Secret's password."""
    password = k8s_objects()["Secret", "aioqueue-secrets"]["stringData"]["redis-password"]
    server = RedisServer()
    server.start()
    try:
        with redis.Redis(port=server.port) as r:
            r.config_set("requirepass", password)
        yield server, password
    finally:
        server.stop()


@pytest.mark.anyio
async def test_worker_deployment_runs_a_job_answers_probes_and_drains(
    password_redis: tuple[RedisServer, str], tmp_path: Path
) -> None:
    """The worker container's command line and environment (ConfigMap, Secret and $(VAR)
    resolved; the service host replaced by the local server, the metrics port by a free one)
    start aioqueue-worker: a job submitted before it started completes, the probes' paths answer
    200, the image's HEALTHCHECK passes, and SIGTERM ends it with exit code 0."""
    server, password = password_redis
    objects = k8s_objects()
    c = container(objects, "aioqueue-worker")
    local = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port)}
    env = {**image_env(), **container_env(objects, c, local)}
    url = env["AIOQUEUE_REDIS_URL"]
    assert url == f"redis://:{password}@127.0.0.1:{server.port}/0"
    port = free_port()
    env["AIOQUEUE_METRICS_PORT"] = str(port)
    env["PYTHONPATH"] = str(ROOT)  # the image's /app
    env["PATH"] = os.environ["PATH"]
    argv = k8s_argv(c)
    argv[0] = str(Path(sys.executable).parent / argv[0])

    async with Queue(demo_tasks.queue.name, redis_url=url) as queue:
        job = await queue.submit("demo.burn", work_ms=1.0)
        # What KEDA's redis scaler counts: the pending key is a sorted set, so it takes ZCARD.
        with redis.Redis.from_url(url) as r:
            assert r.type(queue.keys.pending) == b"zset"
            assert r.zcard(queue.keys.pending) == 1

        log = tmp_path / "worker.log"
        proc = start(argv, env, log)
        try:
            result = await job.result(timeout=30)
            assert result["spins"] > 0
            for probe in ("livenessProbe", "readinessProbe"):
                url = f"http://127.0.0.1:{port}{c[probe]['httpGet']['path']}"

                async def ok(url: str = url) -> bool:
                    return await anyio.to_thread.run_sync(http_status, url) == 200

                await eventually(ok, 10, f"200 from {url}")
            check = image_healthcheck()
            check[0] = sys.executable
            healthy = await anyio.to_thread.run_sync(run, check, env)
            assert healthy.returncode == 0, healthy.stderr
            proc.send_signal(signal.SIGTERM)
            await eventually(lambda: proc.poll() is not None, 20, "the worker's exit")
            assert proc.returncode == 0, log.read_text()
        finally:
            stop(proc)
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines), "AIOQUEUE_LOG_FORMAT=json"
    assert "Traceback" not in log.read_text()
