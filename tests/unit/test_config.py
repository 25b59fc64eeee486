"""proxy.yaml validation: every rejection names the place and the reason."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from app.config import (
    REPO_ROOT,
    Admin,
    ConfigError,
    ConfigErrors,
    block,
    load_config,
    parse_config,
    problems,
)

ORIGINAL = """
proxy:
  listen: {address: 0.0.0.0, port: 8080}
  services:
    - name: my-service
      domain: my-service.my-company.com
      hosts:
        - {address: 127.0.0.1, port: 9001}
        - {address: 127.0.0.1, port: 9002}
"""


def config_with(**changes):
    """The original file with one part replaced, as YAML text."""
    document = yaml.safe_load(ORIGINAL)
    document["proxy"].update(changes)
    return yaml.safe_dump(document)


def service_with(**changes):
    service = yaml.safe_load(ORIGINAL)["proxy"]["services"][0]
    service.update(changes)
    return config_with(services=[service])


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


def test_the_original_schema_loads_unchanged_with_defaults():
    config = parse_config(ORIGINAL)
    (service,) = config.services
    assert (config.listen.address, config.listen.port) == ("0.0.0.0", 8080)
    assert service.domain == "my-service.my-company.com"
    assert [(h.address, h.port, h.weight) for h in service.hosts] == [
        ("127.0.0.1", 9001, 1),
        ("127.0.0.1", 9002, 1),
    ]
    assert service.strategy == "round_robin"
    assert (service.timeout.connect, service.timeout.read) == (2.0, 30.0)
    assert config.admin.port == 9901


def test_the_shipped_proxy_yaml_is_valid():
    config = load_config(REPO_ROOT / "proxy.yaml")
    assert {s.domain for s in config.services} == {
        "my-service.my-company.com",
        "my-service2.my-company.com",
        "my-service3.my-company.com",
    }


def test_config_objects_are_immutable():
    config = parse_config(ORIGINAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.services[0].hosts[0].port = 1
    assert isinstance(config.services, tuple) and isinstance(config.services[0].hosts, tuple)


def test_defaults_apply_and_services_override_them():
    document = yaml.safe_load(ORIGINAL)
    document["proxy"]["defaults"] = {"strategy": "random", "timeout": {"connect": 0.5, "read": 7}}
    second = dict(document["proxy"]["services"][0], name="b", domain="b.example.com")
    second.update(strategy="least_connections", timeout={"read": 1.5})
    document["proxy"]["services"].append(second)
    first, other = parse_config(yaml.safe_dump(document)).services
    assert (first.strategy, first.timeout.connect, first.timeout.read) == ("random", 0.5, 7.0)
    assert (other.strategy, other.timeout.connect, other.timeout.read) == (
        "least_connections",
        0.5,
        1.5,
    )


def test_domains_are_matched_lower_case_without_final_dot():
    (service,) = parse_config(service_with(domain="API.Example.COM.")).services
    assert service.domain == "api.example.com"


def test_host_addresses_may_be_dns_names():
    text = service_with(hosts=[{"address": "lbserverdown.default.svc.cluster.local", "port": 80}])
    assert (
        parse_config(text).services[0].hosts[0].address == "lbserverdown.default.svc.cluster.local"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "(top level): expected a mapping, got nothing"),
        ("proxy: [1]", "proxy: expected a mapping, got a list"),
        ("proxy: {}", "proxy.services: required key is missing"),
        ("proxy: {services: []}", "proxy.services: must not be empty"),
        ("proxy: {services: 3}", "proxy.services: expected a list, got 3"),
        ("proxy: {services: [{}]}", "proxy.services[0].domain: required key is missing"),
        (
            config_with(listen={"port": "abc"}),
            "proxy.listen.port: expected an integer 1-65535, got 'abc'",
        ),
        (
            config_with(listen={"port": 70000}),
            "proxy.listen.port: expected an integer 1-65535, got 70000",
        ),
        (
            config_with(listen={"port": True}),
            "proxy.listen.port: expected an integer 1-65535, got a boolean (true)",
        ),
        (config_with(lisen={}), "proxy.lisen: unknown key (did you mean 'listen'?)"),
        (config_with(admin={"port": 8080}), "proxy.admin.port: must differ from proxy.listen.port"),
        (service_with(hosts=[]), "proxy.services[0].hosts: must not be empty"),
        (
            service_with(hosts=[{"address": "127.0.0.1"}]),
            "proxy.services[0].hosts[0].port: required key is missing",
        ),
        (
            service_with(hosts=[{"address": "127.0.0.1", "port": "abc"}]),
            "proxy.services[0].hosts[0].port: expected an integer 1-65535, got 'abc'",
        ),
        (
            service_with(hosts=[{"address": "no such host!", "port": 1}]),
            "proxy.services[0].hosts[0].address: expected an IP address or a DNS name, got 'no such host!'",
        ),
        (
            service_with(hosts=[{"address": "127.0.0.1", "port": 1, "weight": 0}]),
            "proxy.services[0].hosts[0].weight: expected an integer 1-1000, got 0",
        ),
        (
            service_with(hosts=[{"address": "127.0.0.1", "port": 1, "wieght": 2}]),
            "proxy.services[0].hosts[0].wieght: unknown key (did you mean 'weight'?)",
        ),
        (
            service_with(hosts=[{"address": "h", "port": 1}, {"address": "h", "port": 1}]),
            "proxy.services[0].hosts[1]: h:1 is already listed as proxy.services[0].hosts[0]",
        ),
        (
            service_with(strategy="fastest"),
            "proxy.services[0].strategy: expected one of round_robin, random, least_connections, got 'fastest'",
        ),
        (
            service_with(timeout={"read": -1}),
            "proxy.services[0].timeout.read: expected a positive number of seconds, got -1",
        ),
        (
            service_with(timeout={"connect": 0}),
            "proxy.services[0].timeout.connect: expected a positive number of seconds, got 0",
        ),
        (
            service_with(timeout={"connect": "2s"}),
            "proxy.services[0].timeout.connect: expected a positive number of seconds, got '2s'",
        ),
        (service_with(name=""), "proxy.services[0].name: expected a non-empty string, got ''"),
        (
            service_with(domain="http://x.com/"),
            "proxy.services[0].domain: expected a DNS name such as api.example.com, got 'http://x.com/'",
        ),
        (
            config_with(defaults={"strategy": "x"}),
            "proxy.defaults.strategy: expected one of round_robin, random, least_connections, got 'x'",
        ),
        (
            config_with(defaults={"timeout": {"read": -2}}),
            "proxy.defaults.timeout.read: expected a positive number of seconds, got -2",
        ),
        ("proxy: {services: [a: b: c]}", "line 1, column 24: not valid YAML"),
    ],
)
def test_each_problem_is_named_with_its_place_and_reason(text, message):
    assert error_of(text).startswith(message)


def test_duplicate_domains_and_names_are_refused():
    document = yaml.safe_load(ORIGINAL)
    service = document["proxy"]["services"][0]
    document["proxy"]["services"].append(
        dict(service, name="other", domain="MY-SERVICE.my-company.com")
    )
    assert error_of(yaml.safe_dump(document)) == (
        "proxy.services[1].domain: 'my-service.my-company.com' is already used by proxy.services[0]"
    )
    document["proxy"]["services"][1]["domain"] = "other.example.com"
    document["proxy"]["services"][1]["name"] = "my-service"
    assert error_of(yaml.safe_dump(document)) == (
        "proxy.services[1].name: 'my-service' is already used by proxy.services[0]"
    )


def test_an_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\(file\): cannot read it"):
        load_config(tmp_path / "missing.yaml")


def test_proxy_config_env_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "other.yaml"
    path.write_text(service_with(domain="from-env.example.com"))
    monkeypatch.setenv("PROXY_CONFIG", str(path))
    assert load_config().services[0].domain == "from-env.example.com"


def test_resilience_keys_default_and_inherit_key_by_key():
    document = yaml.safe_load(ORIGINAL)
    document["proxy"]["defaults"] = {
        "retry": {"attempts": 1, "on_status": [502, 503]},
        "outlier": {"consecutive_failures": 7},
        "health_check": {"path": "/ping", "interval": 2},
        "max_in_flight": 100,
        "timeout": {"total": 9},
    }
    document["proxy"]["limits"] = {"max_body_size": 1024, "client_timeout": 5}
    service = document["proxy"]["services"][0]
    service["retry"] = {"budget": 0.5}
    service["health_check"] = {"timeout": 0.5}
    config = parse_config(yaml.safe_dump(document))
    (parsed,) = config.services
    assert (parsed.retry.attempts, parsed.retry.on_status, parsed.retry.budget) == (
        1,
        (502, 503),
        0.5,
    )
    assert parsed.outlier.consecutive_failures == 7 and parsed.outlier.base_ejection == 5
    assert (parsed.health_check.path, parsed.health_check.interval) == ("/ping", 2)
    assert parsed.health_check.timeout == 0.5
    assert (parsed.max_in_flight, parsed.max_in_flight_per_host) == (100, None)
    assert (parsed.timeout.total, parsed.timeout.read) == (9, 30)
    assert (config.limits.max_body_size, config.limits.client_timeout) == (1024, 5)
    assert config.limits.max_header_count == 100


def test_health_check_is_off_unless_configured_and_can_be_turned_off():
    assert parse_config(ORIGINAL).services[0].health_check is None
    document = yaml.safe_load(ORIGINAL)
    document["proxy"]["defaults"] = {"health_check": {"path": "/hc"}}
    document["proxy"]["services"][0]["health_check"] = None
    assert parse_config(yaml.safe_dump(document)).services[0].health_check is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            service_with(retry={"attempts": 11}),
            "proxy.services[0].retry.attempts: expected an integer 0-10, got 11",
        ),
        (
            service_with(retry={"on_status": [404]}),
            "proxy.services[0].retry.on_status[0]: expected an integer 500-599, got 404",
        ),
        (
            service_with(retry={"on_status": 503}),
            "proxy.services[0].retry.on_status: expected a list of 5xx status codes, got 503",
        ),
        (
            service_with(retry={"budget": 2}),
            "proxy.services[0].retry.budget: expected a number 0-1, got 2",
        ),
        (
            service_with(outlier={"count_5xx": "yes"}),
            "proxy.services[0].outlier.count_5xx: expected true or false, got 'yes'",
        ),
        (
            service_with(outlier={"max_ejected_percent": 101}),
            "proxy.services[0].outlier.max_ejected_percent: expected an integer 0-100, got 101",
        ),
        (
            service_with(health_check={"path": "ping"}),
            "proxy.services[0].health_check.path: expected a path starting with /, got 'ping'",
        ),
        (
            service_with(health_check={"interval": -1}),
            "proxy.services[0].health_check.interval: expected a positive number of seconds, got -1",
        ),
        (
            service_with(max_in_flight=0),
            "proxy.services[0].max_in_flight: expected an integer 1-1000000, got 0",
        ),
        (
            service_with(timeout={"total": -3}),
            "proxy.services[0].timeout.total: expected a positive number of seconds, got -3",
        ),
        (
            config_with(limits={"max_body_size": -1}),
            "proxy.limits.max_body_size: expected an integer 0-4611686018427387904, got -1",
        ),
        (
            config_with(limits={"client_timeout": 1.5}),
            "proxy.limits.client_timeout: expected an integer 1-3600, got 1.5",
        ),
        (
            config_with(limits={"max_headers": 5}),
            "proxy.limits.max_headers: unknown key (did you mean 'max_header_size'?)",
        ),
    ],
)
def test_resilience_keys_are_validated(text, message):
    assert error_of(text).startswith(message)


# --- every problem at once ---------------------------------------------------

EIGHT_PROBLEMS = """
proxy:
  listen: {address: 0.0.0.0, port: 80800}
  admin: {port: 9901, colour: blue}
  statsd: {interval: -1}
  services:
    - name: a
      domain: a.test
      hosts: [{address: 127.0.0.1, port: abc}, {address: "not a host", port: 1}]
    - name: b
      domian: b.test
      hosts: [{address: 127.0.0.1, port: 1}]
      strategy: fastest
"""


def wheres(text: str) -> list[str]:
    """The places of every problem of ``text``, in the order they are reported."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [problem.where for problem in problems(caught.value)]


def test_a_file_is_read_to_its_end_and_every_problem_reported():
    with pytest.raises(ConfigErrors) as caught:
        parse_config(EIGHT_PROBLEMS)
    assert [problem.where for problem in caught.value.errors] == [
        "proxy.admin.colour",
        "proxy.listen.port",
        "proxy.services[0].hosts[0].port",
        "proxy.services[0].hosts[1].address",
        "proxy.services[1].domian",
        "proxy.services[1].domain",
        "proxy.services[1].strategy",
        "proxy.statsd.interval",
    ]
    assert str(caught.value).splitlines()[1] == (
        "proxy.listen.port: expected an integer 1-65535, got 80800"
    )
    assert problems(caught.value) == caught.value.errors


def test_one_problem_is_a_plain_config_error():
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "proxy:\n  services:\n    - {name: a, domain: a.test, hosts: [{address: h, port: 0}]}\n"
        )
    assert type(caught.value) is ConfigError
    assert problems(caught.value) == (caught.value,)
    assert (
        str(caught.value) == "proxy.services[0].hosts[0].port: expected an integer 1-65535, got 0"
    )


def test_checks_that_need_a_failed_part_are_not_run_on_it():
    """A bad service is not compared with the others (no "already used" on top), and a
    listener that failed is not compared with the admin port."""
    text = """
proxy:
  listen: {port: 0}
  admin: {port: 0}
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 0}]}
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}
"""
    assert wheres(text) == [
        "proxy.admin.port",
        "proxy.listen.port",
        "proxy.services[0].hosts[0].port",
    ]


def test_a_block_read_on_its_own_raises_its_first_problem():
    with pytest.raises(ConfigError, match=r"^x\.colour: unknown key") as caught:
        block(Admin, {"port": "no", "colour": 1}, "x")
    assert type(caught.value) is ConfigError


def test_services_are_read_even_when_the_defaults_failed():
    assert wheres("""
proxy:
  defaults: {strategy: nope}
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 0}]}
""") == ["proxy.defaults.strategy", "proxy.services[0].hosts[0].port"]


def test_comparisons_run_over_the_parts_that_passed():
    hosts = "[{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 1}, {address: h, port: 0}]"
    assert wheres(f"""
proxy:
  services:
    - {{name: a, domain: a.test, hosts: [{{address: 127.0.0.1, port: 1}}]}}
    - {{name: a, domain: a.test, hosts: [{{address: 127.0.0.1, port: 2}}], rate_limit: {{rate: 1, scope: global}}}}
    - {{name: c, domain: c.test, hosts: {hosts}}}
""") == [
        "proxy.services[2].hosts[2].port",
        "proxy.services[2].hosts[1]",  # a duplicate of hosts[0], both valid
        "proxy.services[1].domain",
        "proxy.services[1].name",
        "proxy.services[1].rate_limit.scope",
    ]


def test_an_unknown_top_level_key_does_not_hide_the_proxy_block():
    assert wheres("prox: 1\nproxy: {services: []}\n") == ["(top level).prox", "proxy.services"]


def test_every_bad_item_of_a_list_is_named():
    text = """
proxy:
  trusted_proxies: [x, 10.0.0.0/8, y]
  listen: [{port: 0}, {port: 8080}, {port: 8080}]
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}], retry: {on_status: [200, 503, 404]}}
"""
    assert wheres(text) == [
        "proxy.listen[0].port",
        "proxy.listen[2].port",
        "proxy.services[0].retry.on_status[0]",
        "proxy.services[0].retry.on_status[2]",
        "proxy.trusted_proxies[0]",
        "proxy.trusted_proxies[2]",
    ]


def test_the_admin_port_is_compared_with_the_listeners_that_passed():
    assert wheres("""
proxy:
  admin: {port: 8080}
  listen: [{port: 8080}, {port: 0}]
  services: [{name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}]
""") == ["proxy.listen[1].port", "proxy.admin.port"]
    assert wheres("""
proxy:
  admin: {port: 8080}
  listen: {port: 8080}
  services: [{name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}]
""") == ["proxy.admin.port"]


def test_a_services_global_limit_needs_redis_even_when_the_defaults_failed():
    assert wheres("""
proxy:
  defaults: {strategy: nope}
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}], rate_limit: {rate: 1, scope: global}}
""") == ["proxy.defaults.strategy", "proxy.services[0].rate_limit.scope"]


def test_trusted_proxies_are_strings_not_numbers():
    assert wheres("""
proxy:
  trusted_proxies: [10, true, 10.0.0.0/8]
  services: [{name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}]
""") == ["proxy.trusted_proxies[0]", "proxy.trusted_proxies[1]"]


def test_hosts_hash_and_name_by_their_fields_once_worked_out():
    import dataclasses

    from app.config import Host

    a, b = Host("10.0.0.1", 80), Host("10.0.0.1", 80)
    assert (a == b, hash(a) == hash(b), {a: 1}[b]) == (True, True, 1)
    for other in (dataclasses.replace(a, port=81), dataclasses.replace(a, weight=2)):
        assert other != a and other not in {a}
    assert (a.name, Host(srv="_http._tcp.x.test", resolve=True).name) == (
        "10.0.0.1:80",
        "_http._tcp.x.test",
    )
