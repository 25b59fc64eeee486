"""Session affinity: cookie insert and the consistent-hash ring."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from app.config import ConfigError, Host, parse_config
from app.traffic.affinity import CookieAffinity, HashAffinity, cookie_in
from app.traffic.routing import Router
from tests.processes import REPO

HOSTS = "[{address: 10.0.0.1, port: 8080}, {address: 10.0.0.2, port: 8080},"
HOSTS += " {address: 10.0.0.3, port: 8080}, {address: 10.0.0.4, port: 8080}]"


def service(affinity: str, hosts: str = HOSTS, extra: str = ""):
    text = f"""
proxy:
  services:
    - name: web
      domain: web.test
      hosts: {hosts}
      affinity: {affinity}
{extra}"""
    return parse_config(text).services[0]


COOKIE = service("{cookie: {ttl: 3600}}")


# --- cookie insert ----------------------------------------------------------


def test_the_cookie_value_is_fixed_by_address_and_port_and_reads_as_neither():
    values = CookieAffinity(COOKIE).value_of
    first = values[COOKIE.hosts[0]]
    # The same in any process: never Python's salted hash() (one worker vs another).
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from app.config import Host; from app.traffic import affinity as a;"
            "print(a.cookie_value(Host('10.0.0.1', 8080), a.cookie_key()))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert first == other
    assert len(set(values.values())) == 4
    for host, value in values.items():
        assert "10" not in value[:2] and "8080" not in value and host.address not in value
    # Weight and list position play no part: a reordered, reweighted list agrees.
    reordered = service(
        "{cookie: {}}",
        "[{address: 10.0.0.2, port: 8080, weight: 5}, {address: 10.0.0.1, port: 8080}]",
    )
    assert CookieAffinity(reordered).value_of[reordered.hosts[1]] == first


def test_a_shared_key_changes_every_value(monkeypatch):
    before = CookieAffinity(COOKIE).value_of[COOKIE.hosts[0]]
    monkeypatch.setenv("PROXY_AFFINITY_KEY", "replicas-share-this")
    assert CookieAffinity(COOKIE).value_of[COOKIE.hosts[0]] != before


def test_the_affinity_cookie_is_taken_out_and_the_others_pass_unchanged():
    affinity = CookieAffinity(COOKIE)
    value = affinity.value_of[COOKIE.hosts[2]]
    headers = [
        ("Cookie", f"a=1; lbproxy_affinity={value};  b=x=y"),
        ("Accept", "*/*"),
        ("cookie", "lbproxy_affinity=stale"),
    ]
    host, sent = affinity.sticky_key(headers)
    # The first one sent wins; both copies are gone upstream, every other byte stays.
    assert (host, sent) == (COOKIE.hosts[2], value)
    assert headers == [("Cookie", "a=1;  b=x=y"), ("Accept", "*/*")]


def test_cookie_fields_joined_with_commas_are_read_and_cut_the_same_way():
    # gunicorn joins repeated Cookie fields with "," (an HTTP/2 browser sends one per cookie).
    affinity = CookieAffinity(COOKIE)
    value = affinity.value_of[COOKIE.hosts[1]]
    for joined, rest in [
        (f"a=1,{COOKIE.affinity.cookie.name}={value},b=2", "a=1,b=2"),
        (f"{COOKIE.affinity.cookie.name}={value},b=2", "b=2"),
        (f"a=1, {COOKIE.affinity.cookie.name}={value}", "a=1"),
    ]:
        headers = [("Cookie", joined)]
        assert affinity.sticky_key(headers) == (COOKIE.hosts[1], value)
        assert headers == [("Cookie", rest)]
    hashed = HashAffinity(service("{hash: {cookie: session}}"))
    assert hashed.sticky_key([("Cookie", "a=1,session=s1,b=2")]) == hashed.sticky_key(
        [("Cookie", "session=s1")]
    )


@pytest.mark.parametrize("forged", ["", "garbage", "0" * 20, "lbproxy_affinity", "é\x00"])
def test_a_forged_cookie_names_no_host(forged):
    headers = [("Cookie", f"lbproxy_affinity={forged}")]
    host, _ = CookieAffinity(COOKIE).sticky_key(headers)
    assert host is None and headers == []


def test_set_cookie_attributes():
    affinity = CookieAffinity(COOKIE)
    value = affinity.value_of[COOKIE.hosts[0]]
    assert affinity.set_cookie(COOKIE.hosts[0], secure=False) == (
        f"lbproxy_affinity={value}; Path=/; HttpOnly; Max-Age=3600"
    )
    session = CookieAffinity(service("{cookie: {name: srv}}"))
    assert (
        session.set_cookie(COOKIE.hosts[0], secure=True) == f"srv={value}; Path=/; HttpOnly; Secure"
    )


def test_the_cookie_host_is_taken_only_while_usable():
    route = Router(
        parse_config(f"""
proxy:
  services:
    - {{name: web, domain: web.test, hosts: {HOSTS}, affinity: {{cookie: {{}}}},
       max_in_flight_per_host: 1}}
""")
    ).route("web.test")
    bound = route.service.hosts[3]
    sticky, _ = route.sticky_key([("Cookie", f"lbproxy_affinity={route.affinity.value_of[bound]}")])
    lease = route.pick([], sticky)
    assert lease.host == bound
    assert route.pick([], sticky).host != bound  # full: redispatched
    lease.release()
    assert route.pick([bound], sticky).host != bound  # tried: a retry goes elsewhere
    route.state.host_state[bound].ejected_until = 1e12
    route.state.changed()
    assert route.pick([], sticky).host != bound  # out of rotation


# --- consistent hashing ------------------------------------------------------


HASHED = service("{hash: {header: X-User}}")


def owners(affinity: HashAffinity, keys, usable=lambda host: True):
    return {
        key: affinity.host_for(affinity.sticky_key([("x-user", key)])[0], usable) for key in keys
    }


KEYS = [f"user-{i}" for i in range(2000)]


def test_keys_spread_evenly():
    counts = Counter(owners(HashAffinity(HASHED), KEYS).values())
    assert len(counts) == 4
    assert all(375 <= count <= 625 for count in counts.values()), counts  # 500 ± 25%


def test_weights_are_honoured():
    weighted = service(
        "{hash: {header: X-User}}",
        "[{address: 10.0.0.1, port: 8080, weight: 3}, {address: 10.0.0.2, port: 8080}]",
    )
    counts = Counter(owners(HashAffinity(weighted), KEYS).values())
    assert 2.4 < counts[weighted.hosts[0]] / counts[weighted.hosts[1]] < 3.6


def test_removing_a_host_moves_only_its_keys_wherever_it_was_listed():
    before = owners(HashAffinity(HASHED), KEYS)
    removed = HASHED.hosts[1]  # the second of four: positions of the others shift
    rest = service(
        "{hash: {header: X-User}}",
        "[{address: 10.0.0.4, port: 8080}, {address: 10.0.0.1, port: 8080},"
        " {address: 10.0.0.3, port: 8080}]",
    )
    after = owners(HashAffinity(rest), KEYS)
    for key, host in before.items():
        if host != removed:
            assert after[key] == host
    assert removed not in after.values()


def test_a_key_whose_host_is_unusable_goes_to_the_next_host_and_only_it_moves():
    affinity = HashAffinity(HASHED)
    before = owners(affinity, KEYS)
    down = HASHED.hosts[0]
    after = owners(affinity, KEYS, usable=lambda host: host != down)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved and all(before[key] == down for key in moved)
    assert affinity.host_for(5, lambda host: False) is None


def test_large_weights_make_a_bounded_ring_that_still_honours_them():
    hosts = ", ".join(f"{{address: 10.0.1.{i}, port: 80, weight: {990 + i}}}" for i in range(10))
    ring = HashAffinity(service("{hash: {header: X-User}}", f"[{hosts}]"))
    assert len(ring.points) <= 64_000
    counts = Counter(owners(ring, KEYS).values())
    assert len(counts) == 10
    equal = HashAffinity(
        service(
            "{hash: {header: X-User}}",
            "[{address: 10.0.0.1, port: 80,"
            " weight: 200}, {address: 10.0.0.2, port: 80, weight: 200}]",
        )
    )
    assert len(equal.points) == 2 * 160  # in units of the weights' divisor


def test_a_request_without_the_key_has_no_sticky_key():
    assert HashAffinity(HASHED).sticky_key([("Accept", "*/*")]) == (None, None)
    by_cookie = HashAffinity(service("{hash: {cookie: session}}"))
    assert by_cookie.sticky_key([("Cookie", "other=1")])[0] is None
    a = by_cookie.sticky_key([("Cookie", "other=1; session=abc")])[0]
    assert a == by_cookie.sticky_key([("Cookie", "session=abc")])[0] is not None


def test_the_hash_cookie_is_read_not_stripped():
    headers = [("Cookie", "session=abc")]
    HashAffinity(service("{hash: {cookie: session}}")).sticky_key(headers)
    assert headers == [("Cookie", "session=abc")]
    assert cookie_in(headers, "session") == "abc"


# --- config ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("affinity", "where", "reason"),
    [
        ("{}", "affinity", "exactly one of cookie or hash"),
        ("{cookie: {}, hash: {header: X}}", "affinity", "exactly one of cookie or hash"),
        ("{hash: {}}", "affinity.hash", "exactly one of header or cookie"),
        ("{hash: {header: X, cookie: s}}", "affinity.hash", "exactly one of header or cookie"),
        ("{cookie: {name: 'a b'}}", "affinity.cookie.name", "expected a cookie name"),
        ("{cookie: {ttl: 0}}", "affinity.cookie.ttl", "expected an integer"),
        ("{hash: {header: 'X:Y'}}", "affinity.hash.header", "expected a header name"),
        ("{hash: {header: X_User}}", "affinity.hash.header", "headers with _ are dropped"),
        ("{hash: {header: Connection}}", "affinity.hash.header", "cannot key affinity"),
        ("{hash: {header: X-Request-Id}}", "affinity.hash.header", "cannot key affinity"),
        ("{sticky: {}}", "affinity.sticky", "unknown key"),
    ],
)
def test_bad_affinity_blocks_name_the_field(affinity, where, reason):
    with pytest.raises(ConfigError) as error:
        service(affinity)
    assert error.value.where == f"proxy.services[0].{where}"
    assert reason in error.value.reason


def test_affinity_comes_from_defaults_whole_and_null_turns_it_off():
    text = f"""
proxy:
  defaults: {{affinity: {{cookie: {{name: sid, ttl: 60}}}}}}
  services:
    - {{name: a, domain: a.test, hosts: {HOSTS}}}
    - {{name: b, domain: b.test, hosts: {HOSTS}, affinity: {{hash: {{header: X-User}}}}}}
    - {{name: c, domain: c.test, hosts: {HOSTS}, affinity: null}}
    - {{name: d, domain: d.test, hosts: {HOSTS}, affinity: {{cookie: }}}}
"""
    a, b, c, d = parse_config(text).services
    assert (a.affinity.cookie.name, a.affinity.cookie.ttl) == ("sid", 60)
    assert b.affinity.cookie is None and b.affinity.hash.header == "X-User"
    assert c.affinity is None
    assert (d.affinity.cookie.name, d.affinity.cookie.ttl) == ("lbproxy_affinity", None)


def test_a_cookie_host_the_route_no_longer_has_is_no_cookie():
    route = Router(
        parse_config(f"""
proxy:
  services:
    - {{name: web, domain: web.test, hosts: {HOSTS}, affinity: {{cookie: {{}}}}}}
""")
    ).route("web.test")
    gone = Host("10.9.9.9", 8080)  # a resolved address that left since the first try
    lease = route.pick([], gone)
    assert lease.host in route.service.hosts
    lease.release()
