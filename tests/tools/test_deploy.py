"""Offline checks of the container image and the Kubernetes deployment (k8s/, Dockerfile).

Nothing here needs a Docker engine or a cluster: kustomize renders every overlay,
kubernetes-validate checks the output against a current Kubernetes schema in
strict mode, yamllint and hadolint lint the sources, the proxy.yaml inside each
rendered ConfigMap goes through the proxy's own validation, and the manifests
are read for what a safe deployment needs (hardening, probes on the admin
port, drain time, hashed config, PDB and HPA on the proxy pods). What only a
real cluster can show is listed in docs/deploy.md.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import Admin, Listen, parse_config
from tests.tools import dockerfile as dockerfile_model

DEFAULT_ADMIN_PORT = Admin().port
DEFAULT_LISTEN_PORT = Listen().port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "demo": K8S / "overlays" / "demo",
    "redis": K8S / "overlays" / "redis",
}
DOCKERFILES = [ROOT / "Dockerfile"]
# The newest schema kubernetes-validate ships (its --help lists them).
KUBERNETES_VERSION = "1.37.0"
DEMO_DOMAINS = {
    "my-service.my-company.com",
    "my-service2.my-company.com",
    "my-service3.my-company.com",
}
CONFIG_NAME = "lbproxy-config"


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


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request) -> tuple[str, str, list[dict]]:
    text = kustomize(OVERLAYS[request.param])
    return request.param, text, [doc for doc in yaml.safe_load_all(text) if doc]


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
    return one(docs, "Deployment", "lbproxy")


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def config_text(docs: list[dict]) -> tuple[str, str]:
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


# --- rendering and schema -----------------------------------------------------


def test_kustomize_renders_every_overlay(rendered):
    name, _, docs = rendered
    kinds = {doc["kind"] for doc in docs}
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds, f"{name}: rendered only {sorted(kinds)}"


def test_kubernetes_validate_strict(rendered, tmp_path):
    name, text, _ = rendered
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = run(
        tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)
    )
    assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    assert "ERROR" not in result.stdout + result.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(rendered, tmp_path):
    """The control for the test above: strict mode really runs on this machine, offline."""
    name, _, docs = rendered
    broken = proxy_deployment(docs)
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # typo
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = run(
        tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)
    )
    assert result.returncode != 0, f"{name}: a misspelt field passed strict validation"
    assert "readOnlyRootFileSystem" in result.stdout + result.stderr


def test_yamllint_passes_on_the_sources():
    result = run(tool("yamllint"), "--strict", "-f", "parsable", "k8s", ".yamllint")
    assert result.returncode == 0, result.stdout + result.stderr
    linted = run(tool("yamllint"), "--list-files", "k8s").stdout.split()
    assert len(linted) >= 8, f"yamllint saw too few files: {linted}"


def test_yamllint_flags_a_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1   \nb:  [1,2]\n")
    result = run(tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), str(bad))
    assert result.returncode != 0


# --- the proxy's config inside the ConfigMap ------------------------------------


def test_configmap_proxy_yaml_passes_the_proxy_validation(rendered, tmp_path):
    name, _, docs = rendered
    _, text = config_text(docs)
    config = parse_config(text, source=f"{name} ConfigMap")
    assert config.services
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    check = run(sys.executable, "-m", "app", "check", str(path), timeout=30)
    assert check.returncode == 0, check.stderr


def test_container_ports_and_probes_match_the_config(rendered):
    _, _, docs = rendered
    config = parse_config(config_text(docs)[1])
    cont = container(proxy_deployment(docs))
    assert port_number(cont, "http") == config.listen.port
    assert port_number(cont, "admin") == config.admin.port
    liveness, readiness = cont["livenessProbe"]["httpGet"], cont["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert port_number(cont, liveness["port"]) == config.admin.port
    assert port_number(cont, readiness["port"]) == config.admin.port


def test_prometheus_scrapes_the_admin_port_and_metrics_have_a_writable_directory(rendered):
    name, _, docs = rendered
    deployment = proxy_deployment(docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    config = parse_config(config_text(docs)[1])
    assert int(annotations["prometheus.io/port"]) == config.admin.port, name
    assert config.prometheus
    cont = container(deployment)
    env = {e["name"]: e.get("value") for e in cont["env"]}
    mounts = {m["mountPath"]: m["name"] for m in cont["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    directory = env["PROMETHEUS_MULTIPROC_DIR"]
    mount = next(path for path in mounts if directory.startswith(path.rstrip("/") + "/"))
    assert "emptyDir" in volumes[mounts[mount]], "the root filesystem is read-only"


def test_config_is_mounted_where_proxy_config_points(rendered):
    _, _, docs = rendered
    deployment = proxy_deployment(docs)
    cont = container(deployment)
    env = {e["name"]: e.get("value") for e in cont["env"]}
    config_name, _ = config_text(docs)
    volumes = {
        v["name"]: v["configMap"]["name"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in cont["volumeMounts"]}
    directory = str(Path(env["PROXY_CONFIG"]).parent)
    assert volumes.get(mounts.get(directory)) == config_name, (
        f"PROXY_CONFIG={env['PROXY_CONFIG']} is not in the mounted {config_name}"
    )


def test_configmap_name_carries_a_hash_that_follows_the_content(rendered, tmp_path):
    name, _, docs = rendered
    config_name, _ = config_text(docs)
    assert re.fullmatch(rf"{CONFIG_NAME}-[a-z0-9]{{10}}", config_name), config_name
    # A copy of k8s/ with one more line in the overlay's proxy.yaml renders a new name.
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    source = copy / OVERLAYS[name].relative_to(K8S) / "proxy.yaml"
    source.write_text(source.read_text() + "# changed\n")
    changed_name, _ = config_text(list(yaml.safe_load_all(kustomize(source.parent))))
    assert changed_name != config_name
    assert changed_name.startswith(f"{CONFIG_NAME}-")


def test_the_redis_overlay_gives_global_limits_a_redis_they_can_reach():
    docs = [d for d in yaml.safe_load_all(kustomize(OVERLAYS["redis"])) if d]
    config = parse_config(config_text(docs)[1])
    scopes = {service.rate_limit.scope for service in config.services}
    assert scopes == {"global", "local"}
    service = one(docs, "Service", "lbproxy-redis")
    redis = one(docs, "Deployment", "lbproxy-redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    host_port = config.redis.url.split("//")[1].split("/")[0]
    assert host_port == f"lbproxy-redis:{service['spec']['ports'][0]['port']}"
    env = {e["name"]: e.get("value") for e in container(proxy_deployment(docs))["env"]}
    assert int(env["PROXY_REPLICAS"]) >= 2


def test_demo_routes_the_demo_domains_to_the_mock_service_by_dns_name():
    docs = [d for d in yaml.safe_load_all(kustomize(OVERLAYS["demo"])) if d]
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


# --- the Deployment ---------------------------------------------------------------


def test_every_deployment_is_hardened(rendered):
    name, _, docs = rendered
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        where = f"{name}/{deployment['metadata']['name']}"
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
            env = {e["name"]: e.get("value") for e in cont.get("env", [])}
            if cont["image"].startswith("lbproxy"):  # our Python images
                assert env.get("PYTHONDONTWRITEBYTECODE") == "1", where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(cont["resources"][kind]), where
            for resource in ("cpu", "memory"):
                assert quantity(cont["resources"]["requests"][resource]) <= quantity(
                    cont["resources"]["limits"][resource]
                ), f"{where}: {resource} request above its limit"
            assert cont["readinessProbe"] and cont["livenessProbe"], where


def test_proxy_deployment_scale_env_and_rollout(rendered):
    _, _, docs = rendered
    deployment = proxy_deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    cont = container(deployment)
    env = {e["name"]: e for e in cont["env"]}
    assert {"PROXY_CONFIG", "PROXY_WORKERS", "STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"} <= set(
        env
    )
    workers = int(env["PROXY_WORKERS"]["value"])
    assert 1 <= workers <= quantity(cont["resources"]["limits"]["cpu"])
    assert int(env["STATSD_PORT"]["value"]) > 0


def test_termination_lets_in_flight_requests_drain(rendered):
    _, _, docs = rendered
    pod = proxy_deployment(docs)["spec"]["template"]["spec"]
    command = container(proxy_deployment(docs))["lifecycle"]["preStop"]["exec"]["command"]
    assert Path(command[0]).name == "sleep", command
    pre_stop = float(command[-1])
    assert pre_stop >= 1
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful_timeout()


def test_service_pdb_and_hpa_select_the_proxy_pods(rendered):
    _, _, docs = rendered
    deployment = proxy_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)

    service = one(docs, "Service", "lbproxy")
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


# --- the images ---------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = run(tool("hadolint"), "--failure-threshold", "warning", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install gunicorn\n")
    result = run(tool("hadolint"), "--failure-threshold", "warning", str(bad))
    assert result.returncode != 0


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """{stage: [(INSTRUCTION, arguments)]} (tests/tools/dockerfile.py reads it)."""
    return {name: stage.steps for name, stage in dockerfile_model.parse(dockerfile).items()}


def test_dockerfile_proxy_image():
    parsed = stages(ROOT / "Dockerfile")
    stage_names = list(parsed)
    final = parsed[stage_names[-1]]  # `docker build .` builds the last stage
    base = parsed[stage_names[0]][0][1]
    assert re.match(r"python:3\.11\.\d+-slim-\w+ ", base), f"unpinned base: {base}"

    steps = [step for name in stage_names for step in parsed[name]]
    requirements = steps.index(("COPY", "requirements.txt ."))
    install = next(i for i, s in enumerate(steps) if s[0] == "RUN" and "-r requirements" in s[1])
    code = next(i for i, s in enumerate(steps) if s[0] == "COPY" and s[1].startswith("app/"))
    assert requirements < install < code, "dependencies must be installed before code is copied"

    def last(instruction: str) -> str:
        return [a for i, a in final if i == instruction][-1]

    user = last("USER").split(":")[0]
    assert user not in ("root", "0"), user
    assert [i for i, _ in final].index("USER") < [i for i, _ in final].index("ENTRYPOINT")
    assert last("ENTRYPOINT") == '["lbproxy", "run"]'  # the installed package's command
    assert f"127.0.0.1:{DEFAULT_ADMIN_PORT}/healthz" in last("HEALTHCHECK")
    exposed = {int(p) for a in [a for i, a in final if i == "EXPOSE"] for p in a.split()}
    assert {DEFAULT_LISTEN_PORT, DEFAULT_ADMIN_PORT} <= exposed
    env = " ".join(a for i, a in final if i == "ENV")
    assert "PROXY_CONFIG=" in env and "PROXY_WORKERS=" in env


def test_dockerfile_mock_target():
    parsed = stages(ROOT / "Dockerfile")
    assert "mock" in parsed, "no mock target: docker build --target mock"
    mock = parsed["mock"]
    assert any(i == "USER" and a.split(":")[0] not in ("root", "0") for i, a in mock)
    assert any(i == "ENTRYPOINT" and '"mock"' in a for i, a in mock)
    assert any(i == "HEALTHCHECK" for i, a in mock)


def test_dockerignore_keeps_the_build_context_small_but_complete():
    patterns = dockerfile_model.ignore_patterns(ROOT)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/tools/test_deploy.py",
        "k8s/base/hpa.yaml",
        "jmeter/results/run.jtl",
        ".coverage",
        "app/__pycache__/config.cpython-311.pyc",
    ):
        assert dockerfile_model.dockerignored(path, patterns), f"{path} would be sent to the build"
    # Everything a COPY names must stay in the context, or the build fails.
    copied = [
        source
        for stage in stages(ROOT / "Dockerfile").values()
        for i, a in stage
        if i == "COPY" and not a.startswith("--from")
        for source in a.split()[:-1]
    ]
    assert copied
    for source in copied:
        probe = source.rstrip("/") + ("/__init__.py" if source.endswith("/") else "")
        assert (ROOT / probe).exists(), f"COPY {source}: not in the repo"
        assert not dockerfile_model.dockerignored(probe, patterns), (
            f"COPY {source}: excluded by .dockerignore"
        )
