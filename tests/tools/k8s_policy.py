"""What a safe lbproxy deployment needs, checked on rendered Kubernetes manifests.

One set of checks for both ways to deploy: the kustomize renders of k8s/
(test_deploy.py) and the Helm chart's renders (test_helm.py). Each check_*
takes the parsed documents of one render and fails with an assert.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import Admin, Listen, parse_config

DEFAULT_ADMIN_PORT = Admin().port
DEFAULT_LISTEN_PORT = Listen().port

ROOT = Path(__file__).resolve().parents[2]
# The newest schema kubernetes-validate ships (its --help lists them).
KUBERNETES_VERSION = "1.37.0"
PROXY_NAME = "lbproxy"
CONFIG_NAME = "lbproxy-config"
REDIS_NAME = "lbproxy-redis"
DEMO_DOMAINS = {
    "my-service.my-company.com",
    "my-service2.my-company.com",
    "my-service3.my-company.com",
}
PROXY_KINDS = {
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
}


# --- tools ----------------------------------------------------------------------


def tool(name: str) -> str:
    """A command from the venv running the tests, the repo's .venv, or PATH."""
    for directory in (Path(sys.executable).parent, ROOT / ".venv" / "bin"):
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"\n{'!' * 70}\n{name} is not installed: run scripts/setup and "
            f"scripts/install/*.sh (scripts/test does both)\n{'!' * 70}",
            pytrace=False,
        )
    return found


def run(*command: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def kustomize(directory: Path) -> str:
    result = run(tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return result.stdout


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    return run(
        tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)
    )


class _StrictLoader(yaml.SafeLoader):
    """A key given twice is an error: YAML parsers (and the API server) keep one silently."""


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def load_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]


# --- finding things in a render ---------------------------------------------------


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def proxy_deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment", PROXY_NAME)


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_values(cont: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in cont.get("env", [])}


def config_text(docs: list[dict]) -> tuple[str, str]:
    """(name, proxy.yaml) of the one ConfigMap holding the proxy's config."""
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith(CONFIG_NAME)]
    assert len(maps) == 1, f"expected one {CONFIG_NAME} ConfigMap, found {len(maps)}"
    return maps[0]["metadata"]["name"], maps[0]["data"]["proxy.yaml"]


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def port_number(cont: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in cont["ports"]}
    assert port in named, f"port {port!r} is not declared by the container"
    return named[port]


def graceful_timeout() -> int:
    tree = ast.parse((ROOT / "app" / "process" / "gunicorn_conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "graceful_timeout" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return 30  # gunicorn's default


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- the checks ---------------------------------------------------------------------


def check_proxy_kinds(docs: list[dict]) -> None:
    kinds = {doc["kind"] for doc in docs}
    assert kinds >= PROXY_KINDS, f"rendered only {sorted(kinds)}"


def check_strict_schema(text: str, path: Path) -> None:
    path.write_text(text)
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def check_strict_schema_rejects_a_typo(docs: list[dict], path: Path) -> None:
    """The control for check_strict_schema: strict mode really runs, offline."""
    broken = proxy_deployment(docs)
    container(broken)["readOnlyRootFileSystem"] = True  # the misspelt readOnlyRootFilesystem
    path.write_text(yaml.safe_dump(broken))
    result = kubernetes_validate(path)
    assert result.returncode != 0, "a misspelt field passed strict validation"
    assert "readOnlyRootFileSystem" in result.stdout + result.stderr


def check_config_passes_the_proxy_validation(docs: list[dict], path: Path) -> None:
    _, text = config_text(docs)
    config = parse_config(text, source=str(path))
    assert config.services
    path.write_text(text)
    check = run(sys.executable, "-m", "app", "check", str(path), timeout=30)
    assert check.returncode == 0, check.stderr


def check_ports_and_probes(docs: list[dict]) -> None:
    config = parse_config(config_text(docs)[1])
    cont = container(proxy_deployment(docs))
    assert port_number(cont, "http") == config.listen.port
    assert port_number(cont, "admin") == config.admin.port
    liveness, readiness = cont["livenessProbe"]["httpGet"], cont["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert port_number(cont, liveness["port"]) == config.admin.port
    assert port_number(cont, readiness["port"]) == config.admin.port


def check_prometheus(docs: list[dict]) -> None:
    """Scraped on the admin port, with a writable directory for the per-worker files."""
    deployment = proxy_deployment(docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    config = parse_config(config_text(docs)[1])
    assert int(annotations["prometheus.io/port"]) == config.admin.port
    assert config.prometheus
    cont = container(deployment)
    mounts = {m["mountPath"]: m["name"] for m in cont["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    directory = env_values(cont)["PROMETHEUS_MULTIPROC_DIR"]
    mount = next(path for path in mounts if directory.startswith(path.rstrip("/") + "/"))
    assert "emptyDir" in volumes[mounts[mount]], "the root filesystem is read-only"


def check_config_mounted_where_proxy_config_points(docs: list[dict]) -> None:
    deployment = proxy_deployment(docs)
    cont = container(deployment)
    proxy_config = env_values(cont)["PROXY_CONFIG"]
    config_name, _ = config_text(docs)
    volumes = {
        v["name"]: v["configMap"]["name"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in cont["volumeMounts"]}
    directory = str(Path(proxy_config).parent)
    assert volumes.get(mounts.get(directory)) == config_name, (
        f"PROXY_CONFIG={proxy_config} is not in the mounted {config_name}"
    )


def check_hardened(docs: list[dict]) -> None:
    for deployment in find(docs, "Deployment"):
        _check_pod_hardened(deployment["spec"]["template"]["spec"], deployment["metadata"]["name"])


def _check_pod_hardened(pod: dict, where: str) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["runAsUser"] > 0, where
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
    assert pod.get("automountServiceAccountToken") is False, where
    temp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for cont in pod["containers"]:
        context = cont["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert not context.get("capabilities", {}).get("add"), where
        assert context.get("privileged") is not True, where
        # Read-only root: gunicorn's worker heartbeat files need a writable /tmp.
        mounts = {m["mountPath"]: m["name"] for m in cont["volumeMounts"]}
        assert mounts.get("/tmp") in temp, f"{where}: /tmp is not an emptyDir"
        if cont["image"].startswith("lbproxy"):  # our Python images
            assert env_values(cont).get("PYTHONDONTWRITEBYTECODE") == "1", where
        _check_resources(cont["resources"], where)
        assert cont["readinessProbe"] and cont["livenessProbe"], where


def _check_resources(resources: dict, where: str) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), where
    for resource in ("cpu", "memory"):
        assert quantity(resources["requests"][resource]) <= quantity(
            resources["limits"][resource]
        ), f"{where}: {resource} request above its limit"


def check_scale_env_and_rollout(docs: list[dict]) -> None:
    deployment = proxy_deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    cont = container(deployment)
    env = env_values(cont)
    assert {"PROXY_CONFIG", "PROXY_WORKERS", "STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"} <= set(
        env
    )
    workers = int(env["PROXY_WORKERS"])
    assert 1 <= workers <= quantity(cont["resources"]["limits"]["cpu"])
    assert int(env["STATSD_PORT"]) > 0


def check_drain(docs: list[dict]) -> None:
    """In-flight requests finish: preStop, then gunicorn's graceful_timeout, then SIGKILL."""
    deployment = proxy_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert Path(command[0]).name == "sleep", command
    pre_stop = float(command[-1])
    assert pre_stop >= 1
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful_timeout()


def check_service_pdb_and_hpa_select_the_proxy_pods(docs: list[dict]) -> None:
    deployment = proxy_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)

    service = one(docs, "Service", PROXY_NAME)
    assert selects(service["spec"]["selector"], labels)
    for port in service["spec"]["ports"]:
        assert port_number(container(deployment), port["targetPort"]) == DEFAULT_LISTEN_PORT

    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels)
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1

    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for other in find(docs, "Deployment"):
        if other is not deployment:
            pod_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selects(pdb["spec"]["selector"], pod_labels)
            assert not selects(service["spec"]["selector"], pod_labels)


def check_global_limits_reach_redis(docs: list[dict]) -> None:
    """Global rate limits: a Redis Service whose pods exist, at the URL in proxy.yaml."""
    config = parse_config(config_text(docs)[1])
    scopes = {service.rate_limit.scope for service in config.services}
    assert scopes == {"global", "local"}
    service = one(docs, "Service", REDIS_NAME)
    redis = one(docs, "Deployment", REDIS_NAME)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    host_port = config.redis.url.split("//")[1].split("/")[0]
    assert host_port == f"{REDIS_NAME}:{service['spec']['ports'][0]['port']}"
    env = env_values(container(proxy_deployment(docs)))
    assert int(env["PROXY_REPLICAS"]) >= 2


def check_demo_routes(docs: list[dict]) -> None:
    """The demo domains go to the mock's Services (lbserverdown, lbserverdown-pods) by name."""
    config = parse_config(config_text(docs)[1])
    assert {service.domain for service in config.services} == DEMO_DOMAINS
    service = one(docs, "Service", "lbserverdown")
    ports = {p["port"] for p in service["spec"]["ports"]}
    for routed in config.services:
        for host in routed.hosts:
            assert host.address.split(".")[0] == "lbserverdown", host
            assert host.port in ports, host
    # Discovery: a headless Service of the same pods, resolved by lbproxy itself.
    headless = one(docs, "Service", "lbserverdown-pods")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == service["spec"]["selector"]
    resolved = [entry for routed in config.services for entry in routed.discover]
    assert resolved, "the demo shows resolve: true"
    for entry in resolved:
        assert entry.address.split(".")[0] == "lbserverdown-pods", entry
        assert entry.port in {p["port"] for p in headless["spec"]["ports"]}
    mock = one(docs, "Deployment", "lbserverdown")
    assert mock["spec"]["replicas"] == 3
    assert selects(service["spec"]["selector"], mock["spec"]["template"]["metadata"]["labels"])
    assert not selects(
        service["spec"]["selector"],
        proxy_deployment(docs)["spec"]["template"]["metadata"]["labels"],
    )


# Every render of the proxy passes these (the kustomize overlays, the chart's
# values files); test_helm.py runs them all, test_deploy.py one test each.
POLICY = (
    check_proxy_kinds,
    check_ports_and_probes,
    check_prometheus,
    check_config_mounted_where_proxy_config_points,
    check_hardened,
    check_scale_env_and_rollout,
    check_drain,
    check_service_pdb_and_hpa_select_the_proxy_pods,
)
