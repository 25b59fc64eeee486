"""Offline checks of the container image and the Kubernetes deployment (k8s/, Dockerfile).

Nothing here needs a Docker engine or a cluster: kustomize renders every overlay,
kubernetes-validate checks the output against a current Kubernetes schema in
strict mode, yamllint and hadolint lint the sources, the proxy.yaml inside each
rendered ConfigMap goes through the proxy's own validation, and the manifests
are read for what a safe deployment needs (hardening, probes on the admin
port, drain time, hashed config, PDB and HPA on the proxy pods: the checks of
k8s_policy.py, which test_helm.py runs on the Helm chart too). What only a real
cluster can show is listed in docs/deploy.md.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.tools import dockerfile as dockerfile_model
from tests.tools.k8s_policy import (
    CONFIG_NAME,
    DEFAULT_ADMIN_PORT,
    DEFAULT_LISTEN_PORT,
    ROOT,
    check_config_mounted_where_proxy_config_points,
    check_config_passes_the_proxy_validation,
    check_demo_routes,
    check_drain,
    check_global_limits_reach_redis,
    check_hardened,
    check_ports_and_probes,
    check_prometheus,
    check_proxy_kinds,
    check_scale_env_and_rollout,
    check_service_pdb_and_hpa_select_the_proxy_pods,
    check_strict_schema,
    check_strict_schema_rejects_a_typo,
    config_text,
    kustomize,
    load_docs,
    run,
    tool,
)

K8S = ROOT / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "demo": K8S / "overlays" / "demo",
    "redis": K8S / "overlays" / "redis",
}
DOCKERFILES = [ROOT / "Dockerfile"]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request) -> tuple[str, str, list[dict]]:
    text = kustomize(OVERLAYS[request.param])
    return request.param, text, load_docs(text)


# --- rendering and schema -----------------------------------------------------


def test_kustomize_renders_every_overlay(rendered):
    check_proxy_kinds(rendered[2])


def test_kubernetes_validate_strict(rendered, tmp_path):
    name, text, _ = rendered
    check_strict_schema(text, tmp_path / f"{name}.yaml")


def test_kubernetes_validate_strict_rejects_an_unknown_field(rendered, tmp_path):
    """The control for the test above: strict mode really runs on this machine, offline."""
    check_strict_schema_rejects_a_typo(rendered[2], tmp_path / "broken.yaml")


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
    check_config_passes_the_proxy_validation(rendered[2], tmp_path / "proxy.yaml")


def test_container_ports_and_probes_match_the_config(rendered):
    check_ports_and_probes(rendered[2])


def test_prometheus_scrapes_the_admin_port_and_metrics_have_a_writable_directory(rendered):
    check_prometheus(rendered[2])


def test_config_is_mounted_where_proxy_config_points(rendered):
    check_config_mounted_where_proxy_config_points(rendered[2])


def test_configmap_name_carries_a_hash_that_follows_the_content(rendered, tmp_path):
    name, _, docs = rendered
    config_name, _ = config_text(docs)
    assert re.fullmatch(rf"{CONFIG_NAME}-[a-z0-9]{{10}}", config_name), config_name
    # A copy of k8s/ with one more line in the overlay's proxy.yaml renders a new name.
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    source = copy / OVERLAYS[name].relative_to(K8S) / "proxy.yaml"
    source.write_text(source.read_text() + "# changed\n")
    changed_name, _ = config_text(load_docs(kustomize(source.parent)))
    assert changed_name != config_name
    assert changed_name.startswith(f"{CONFIG_NAME}-")


def test_the_redis_overlay_gives_global_limits_a_redis_they_can_reach():
    check_global_limits_reach_redis(load_docs(kustomize(OVERLAYS["redis"])))


def test_demo_routes_the_demo_domains_to_the_mock_service_by_dns_name():
    check_demo_routes(load_docs(kustomize(OVERLAYS["demo"])))


# --- the Deployment ---------------------------------------------------------------


def test_every_deployment_is_hardened(rendered):
    check_hardened(rendered[2])


def test_proxy_deployment_scale_env_and_rollout(rendered):
    check_scale_env_and_rollout(rendered[2])


def test_termination_lets_in_flight_requests_drain(rendered):
    check_drain(rendered[2])


def test_service_pdb_and_hpa_select_the_proxy_pods(rendered):
    check_service_pdb_and_hpa_select_the_proxy_pods(rendered[2])


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
