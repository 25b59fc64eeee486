"""Offline checks of the Helm chart k8s/helm/lbproxy.

helm-python-sdk runs Helm v4's own Go code in-process (no helm binary, no
cluster): strict lint, values.schema.json, and the render of each values set the
chart ships (default, values-demo.yaml, + values-redis.yaml, the counterparts of
k8s/base and the two overlays). Each render goes through kubernetes-validate
--strict, the policy checks of k8s_policy.py that the kustomize renders pass too,
and the proxy's own validation of the proxy.yaml in its ConfigMap. The drift
tests hold each render equal to its kustomize counterpart, apart from what Helm
legitimately adds (its labels, the release instance in selectors, the config
checksum instead of a hashed ConfigMap name).
"""

from __future__ import annotations

import copy
import itertools
import re
import shutil

import helm_python as helm
import pytest
import yaml

from tests.tools.k8s_policy import (
    CONFIG_NAME,
    KUBERNETES_VERSION,
    POLICY,
    PROXY_NAME,
    REDIS_NAME,
    ROOT,
    check_config_passes_the_proxy_validation,
    check_demo_routes,
    check_global_limits_reach_redis,
    check_ports_and_probes,
    check_prometheus,
    check_strict_schema,
    check_strict_schema_rejects_a_typo,
    config_text,
    container,
    env_values,
    find,
    kustomize,
    load_docs,
    proxy_deployment,
)

CHART = ROOT / "k8s" / "helm" / "lbproxy"
RELEASE = PROXY_NAME  # `helm install lbproxy`: the resource names of k8s/base
NAMESPACE = "lbproxy-test"
# Each values set and the kustomize directory it must equal.
VARIANTS = {
    "default": ((), ROOT / "k8s" / "base"),
    "demo": (("values-demo.yaml",), ROOT / "k8s" / "overlays" / "demo"),
    "redis": (("values-demo.yaml", "values-redis.yaml"), ROOT / "k8s" / "overlays" / "redis"),
}
# Keys only the chart has, anywhere in a manifest: Helm's conventional labels,
# the release instance (in labels and selectors) and the config checksum.
CHART_ONLY_KEYS = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "checksum/config",
}
HASHED_CONFIG_NAME = re.compile(rf"^{CONFIG_NAME}-[a-z0-9]{{10}}$")
# The demo overlay's own objects, which the chart leaves to the overlay.
DEMO_ONLY = ROOT / "k8s" / "overlays" / "demo" / "lbserverdown.yaml"


def merge_maps(base: dict, override: dict) -> dict:
    """`helm -f a -f b`: maps merge key by key, anything else (a list) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_maps(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_of(*files: str) -> dict:
    values: dict = {}
    for name in files:
        values = merge_maps(values, helm.values_from_yaml((CHART / name).read_text()))
    return values


def render(chart: helm.Chart, values: dict | None = None) -> tuple[str, list[dict]]:
    """The manifests as `helm template` prints them, and parsed (NOTES.txt left out)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    text = "\n---\n".join(
        body for path, body in sorted(manifests.items()) if path.endswith(".yaml")
    )
    return text, load_docs(text)


def notes(chart: helm.Chart, values: dict | None = None) -> str:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return manifests[f"{CHART.name}/templates/NOTES.txt"]


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request, chart) -> tuple[str, str, list[dict]]:
    text, docs = render(chart, values_of(*VARIANTS[request.param][0]))
    return request.param, text, docs


# --- the chart, lint and schema -----------------------------------------------------


def test_chart_metadata(chart):
    metadata = chart.metadata
    assert (metadata["apiVersion"], metadata["name"]) == ("v2", "lbproxy")
    assert (metadata["version"], metadata["appVersion"]) == ("0.1.0", "0.1.0")
    assert chart.schema["additionalProperties"] is False
    assert chart.schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def lint_findings(report: dict) -> list[dict]:
    """Lint messages above info ("icon is recommended" is info)."""
    return [message for message in report["messages"] if message["severity"] >= 2]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict_passes(variant):
    report = helm.lint(
        CHART,
        values_of(*VARIANTS[variant][0]),
        strict=True,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    assert lint_findings(report) == [], report


def test_lint_fails_on_a_broken_template(tmp_path):
    """The control for the lint: a copy with an unclosed action fails it."""
    copy_dir = tmp_path / CHART.name
    shutil.copytree(CHART, copy_dir)
    service = copy_dir / "templates" / "service.yaml"
    service.write_text(service.read_text() + "{{ if .Values.service.port }}\n")
    report = helm.lint(copy_dir, strict=True)
    assert any("templates/service.yaml" in error for error in report["errors"]), report


def test_lint_fails_on_values_the_schema_rejects():
    report = helm.lint(CHART, {"replicas": "two"}, strict=True)
    assert any("/replicas" in error for error in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "pointer"),
    [
        pytest.param({"replicas": "two"}, "/replicas", id="a string for a number"),
        pytest.param({"replica": 3}, "'replica' not allowed", id="an unknown key"),
        pytest.param({"hpa": {"enable": False}}, "'enable' not allowed", id="a nested typo"),
        pytest.param({"image": {"tag": 1.1}}, "/image/tag", id="a number for a tag"),
        pytest.param({"service": {"port": 0}}, "/service/port", id="port 0"),
        pytest.param({"pdb": {"minAvailable": "half"}}, "/pdb/minAvailable", id="a bad budget"),
        pytest.param(
            {"redis": {"url": "lbproxy-redis:6379"}}, "/redis/url", id="a URL sans scheme"
        ),
        pytest.param(
            {"config": {"proxy": {"services": []}}}, "/config/proxy/services", id="no services"
        ),
    ],
)
def test_schema_rejects_bad_values(chart, values, pointer):
    with pytest.raises(helm.HelmValuesError, match=re.escape(pointer)):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError, match=re.escape(pointer)):
        chart.render(values, name=RELEASE)  # what `helm install` does with them


def test_load_docs_rejects_a_key_given_twice():
    """Renders are parsed strictly: a label written by two helpers would be one silently."""
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
        load_docs("metadata:\n  labels:\n    a: x\n    a: y\n")


# --- each render: schema, policy, the proxy's config ----------------------------------


def test_kubernetes_validate_strict(rendered, tmp_path):
    name, text, _ = rendered
    check_strict_schema(text, tmp_path / f"{name}.yaml")


def test_kubernetes_validate_strict_rejects_an_unknown_field(rendered, tmp_path):
    check_strict_schema_rejects_a_typo(rendered[2], tmp_path / "broken.yaml")


@pytest.mark.parametrize("check", POLICY, ids=lambda check: check.__name__)
def test_policy(rendered, check):
    check(rendered[2])


def test_configmap_proxy_yaml_passes_the_proxy_validation(rendered, tmp_path):
    check_config_passes_the_proxy_validation(rendered[2], tmp_path / "proxy.yaml")


def test_demo_values_route_the_demo_domains_to_the_demo_mock(chart):
    _, docs = render(chart, values_of("values-demo.yaml"))
    check_demo_routes(docs + load_docs(DEMO_ONLY.read_text()))


def test_redis_values_give_global_limits_a_redis_they_can_reach(chart):
    _, docs = render(chart, values_of("values-demo.yaml", "values-redis.yaml"))
    check_global_limits_reach_redis(docs)
    assert env_values(container(proxy_deployment(docs)))["PROXY_REPLICAS"] == "10"  # hpa max


# --- the same resources as kustomize ---------------------------------------------------


def without_chart_only(value):
    """A copy without CHART_ONLY_KEYS anywhere, and kustomize's hash suffix off names."""
    if isinstance(value, dict):
        return {k: without_chart_only(v) for k, v in value.items() if k not in CHART_ONLY_KEYS}
    if isinstance(value, list):
        return [without_chart_only(item) for item in value]
    if isinstance(value, str) and HASHED_CONFIG_NAME.match(value):
        return CONFIG_NAME
    return value


def comparable(docs: list[dict]) -> dict[tuple[str, str], tuple[dict, dict]]:
    """{(kind, name): (labels, the rest)}: the rest is compared exactly, labels as a subset."""
    result = {}
    for doc in docs:
        doc = without_chart_only(copy.deepcopy(doc))
        metadata = doc.pop("metadata")
        metadata.pop("namespace", None)  # set by `helm install -n`, or by the overlay
        key = (doc["kind"], metadata.pop("name"))
        labels = metadata.pop("labels", {})
        if doc["kind"] == "ConfigMap":  # the same proxy.yaml, formatted by toYaml
            doc["data"] = {name: yaml.safe_load(text) for name, text in doc["data"].items()}
        result[key] = (labels, doc | {"metadata": metadata})
    return result


def kustomize_counterpart(variant: str) -> list[dict]:
    """The kustomize render less what only the demo overlay ships (namespace, mock)."""
    demo_only = {(d["kind"], d["metadata"]["name"]) for d in load_docs(DEMO_ONLY.read_text())}
    return [
        doc
        for doc in load_docs(kustomize(VARIANTS[variant][1]))
        if doc["kind"] != "Namespace" and (doc["kind"], doc["metadata"]["name"]) not in demo_only
    ]


def assert_no_drift(chart_docs: list[dict], kustomize_docs: list[dict]) -> None:
    ours, theirs = comparable(chart_docs), comparable(kustomize_docs)
    assert sorted(ours) == sorted(theirs)
    for key, (their_labels, their_rest) in theirs.items():
        our_labels, our_rest = ours[key]
        assert their_labels.items() <= our_labels.items(), key  # the chart may add labels
        assert our_rest == their_rest, key


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_renders_what_kustomize_renders(chart, variant):
    _, docs = render(chart, values_of(*VARIANTS[variant][0]))
    assert_no_drift(docs, kustomize_counterpart(variant))


def another_service(docs: list[dict]) -> None:
    extra = copy.deepcopy(find(docs, "Service")[0])
    extra["metadata"]["name"] = "lbproxy-admin"
    docs.append(extra)


@pytest.mark.parametrize(
    "change",
    [
        lambda docs: proxy_deployment(docs)["spec"].update(progressDeadlineSeconds=600),
        lambda docs: container(proxy_deployment(docs))["env"].append({"name": "X", "value": ""}),
        lambda docs: find(docs, "Service")[0]["metadata"]["labels"].update(team="edge"),
        another_service,
    ],
    ids=["a field", "an env entry", "a label", "a resource"],
)
def test_drift_check_fails_when_kustomize_has_what_the_chart_lacks(chart, change):
    """The control for the drift test: one more thing on the kustomize side fails it."""
    _, docs = render(chart)
    theirs = kustomize_counterpart("default")
    change(theirs)
    with pytest.raises(AssertionError):
        assert_no_drift(docs, theirs)


# --- what the chart adds: checksum, toggles, derived ports, redis.url, NOTES --------


def checksum_and_config(chart: helm.Chart, values: dict | None) -> tuple[str, str]:
    _, docs = render(chart, values)
    template = proxy_deployment(docs)["spec"]["template"]
    return template["metadata"]["annotations"]["checksum/config"], config_text(docs)[1]


def test_config_checksum_in_the_pod_template_changes_with_the_config_only(chart):
    """`helm upgrade` rolls the pods when proxy.yaml changes, and only then."""
    values = [
        None,
        {"replicas": 3},
        {"image": {"tag": "0.2.0"}},
        {"config": {"proxy": {"defaults": {"strategy": "random"}}}},
        {"redis": {"deploy": True}},  # a new proxy.redis.url
        values_of("values-demo.yaml"),
    ]
    pairs = [checksum_and_config(chart, v) for v in values]
    for (sum_a, config_a), (sum_b, config_b) in itertools.combinations(pairs, 2):
        assert (sum_a == sum_b) == (config_a == config_b)
    assert len({checksum for checksum, _ in pairs}) == 4
    assert all(re.fullmatch("[0-9a-f]{64}", checksum) for checksum, _ in pairs)


def test_hpa_pdb_and_scrape_annotations_can_be_turned_off(chart):
    _, docs = render(
        chart,
        {"hpa": {"enabled": False}, "pdb": {"enabled": False}, "prometheus": {"scrape": False}},
    )
    assert not find(docs, "HorizontalPodAutoscaler")
    assert not find(docs, "PodDisruptionBudget")
    annotations = proxy_deployment(docs)["spec"]["template"]["metadata"]["annotations"]
    assert not [key for key in annotations if key.startswith("prometheus.io/")]
    assert "checksum/config" in annotations


def test_pdb_min_available_wins_over_max_unavailable(chart):
    _, docs = render(chart, {"pdb": {"minAvailable": 1}})
    spec = find(docs, "PodDisruptionBudget")[0]["spec"]
    assert spec["minAvailable"] == 1
    assert "maxUnavailable" not in spec


@pytest.mark.parametrize(
    "proxy",
    [
        {"listen": {"address": "0.0.0.0", "port": 8081}, "admin": {"port": 9902}},
        {"listen": [{"address": "0.0.0.0", "port": 8081}], "admin": {"port": 9902}},
        {"listen": None, "admin": None},  # the proxy's defaults, 8080 and 9901
    ],
    ids=["mapping", "list of listeners", "unset"],
)
def test_container_ports_probes_and_scrape_port_follow_the_config(chart, proxy):
    _, docs = render(chart, {"config": {"proxy": proxy}})
    check_ports_and_probes(docs)
    check_prometheus(docs)


def test_an_external_redis_url_lands_in_proxy_yaml(chart):
    url = "rediss://redis.example.internal:6380/2"
    _, docs = render(chart, {"redis": {"url": url}, "hpa": {"enabled": False}, "replicas": 3})
    config = yaml.safe_load(config_text(docs)[1])
    assert config["proxy"]["redis"] == {"url": url}
    assert not find(docs, "Deployment", REDIS_NAME), "redis.url alone deploys no Redis"
    # Without an HPA the replica count is fixed: global limits fall back to it.
    assert env_values(container(proxy_deployment(docs)))["PROXY_REPLICAS"] == "3"


def test_without_redis_no_replica_count_is_set(chart):
    _, docs = render(chart)
    assert "PROXY_REPLICAS" not in env_values(container(proxy_deployment(docs)))
    assert not find(docs, "Deployment", REDIS_NAME)


@pytest.mark.parametrize("admin_port", [9901, 9902])
def test_notes_tell_how_to_reach_the_proxy_and_its_admin_port(chart, admin_port):
    text = notes(chart, {"config": {"proxy": {"admin": {"port": admin_port}}}})
    assert f"kubectl -n {NAMESPACE} port-forward service/{RELEASE} 8080:80" in text
    assert "curl -s -H 'Host: my-service.my-company.com' http://127.0.0.1:8080/" in text
    assert f"port-forward deployment/{RELEASE} {admin_port}" in text
    for path in ("/status", "/readyz", "/metrics"):
        assert f"http://127.0.0.1:{admin_port}{path}" in text
