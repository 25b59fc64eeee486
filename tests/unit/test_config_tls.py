"""proxy.yaml's TLS keys: listeners as a list, certificates loaded and checked,
upstream_tls; paths relative to the file; every error names its field."""

from __future__ import annotations

import shutil

import pytest
import yaml

from app.config import ConfigError, load_config, parse_config
from devkit.certs import make_ca, make_leaf

SERVICE = {"name": "s", "domain": "s.test", "hosts": [{"address": "127.0.0.1", "port": 9001}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return {
        "dir": directory,
        "ca": ca,
        "a": make_leaf(directory, ca, ["a.test"], stem="a"),
        "b": make_leaf(directory, ca, ["b.test", "*.b.test"], stem="b"),
        "bare": make_leaf(directory, ca, [], ips=("127.0.0.1",), stem="bare"),
    }


def write(directory, listen, services=None, admin=9901):
    path = directory / "proxy.yaml"
    document = {
        "proxy": {"listen": listen, "admin": {"port": admin}, "services": services or [SERVICE]}
    }
    path.write_text(yaml.safe_dump(document))
    return path


def tls_listen(port=8443, *pairs, alpn=None):
    tls = {"certificates": [{"cert": str(p.cert), "key": str(p.key)} for p in pairs]}
    if alpn is not None:
        tls["alpn"] = alpn
    return {"address": "127.0.0.1", "port": port, "tls": tls}


def error_of(path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_a_list_of_listeners_plain_and_tls_with_names_read_from_the_san(pki, tmp_path):
    listen = [{"port": 8080}, tls_listen(8443, pki["a"], pki["b"], alpn=["h2", "http/1.1"])]
    config = load_config(write(tmp_path, listen))
    plain, secure = config.listeners
    assert config.listen is plain and plain.tls is None and plain.port == 8080
    first, second = secure.tls.certificates
    assert first.names == ("a.test",) and second.names == ("b.test", "*.b.test")
    assert secure.tls.alpn == ("h2", "http/1.1") and first.pem.startswith(b"-----BEGIN")


def test_relative_paths_are_relative_to_the_files_directory(pki, tmp_path):
    (tmp_path / "certs").mkdir()
    shutil.copy(pki["a"].cert, tmp_path / "certs" / "a.pem")
    shutil.copy(pki["a"].key, tmp_path / "certs" / "a.key")
    listen = {
        "port": 8443,
        "tls": {"certificates": [{"cert": "certs/a.pem", "key": "certs/a.key"}]},
    }
    config = load_config(write(tmp_path, listen))
    assert config.listen.tls.certificates[0].cert == str(tmp_path / "certs" / "a.pem")
    assert config.listen.tls.alpn == ("http/1.1",)


def test_a_missing_file_names_the_field(pki, tmp_path):
    listen = {
        "port": 8443,
        "tls": {"certificates": [{"cert": "nope.pem", "key": str(pki["a"].key)}]},
    }
    assert error_of(write(tmp_path, listen)) == (
        f"proxy.listen.tls.certificates[0].cert: no such file: {tmp_path / 'nope.pem'}"
    )


def test_a_key_that_does_not_match_its_certificate_is_refused(pki, tmp_path):
    listen = {
        "port": 8443,
        "tls": {"certificates": [{"cert": str(pki["a"].cert), "key": str(pki["b"].key)}]},
    }
    message = error_of(write(tmp_path, listen))
    assert message.startswith(
        "proxy.listen.tls.certificates[0]: the certificate and key do not load as a pair ("
    )


def test_a_second_certificate_without_dns_names_could_never_be_chosen(pki, tmp_path):
    message = error_of(write(tmp_path, [tls_listen(8443, pki["a"], pki["bare"])]))
    assert message.startswith(
        "proxy.listen[0].tls.certificates[1].cert: has no DNS name in its SAN"
    )
    # As the default (first) certificate it is fine.
    assert load_config(write(tmp_path, tls_listen(8443, pki["bare"]))).listen.tls


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"certificates": []}, "proxy.listen.tls.certificates: must not be empty"),
        ({"certificates": "x"}, "proxy.listen.tls.certificates: expected a list, got 'x'"),
        ({"alpn": ["h3"]}, "proxy.listen.tls.alpn[0]: expected one of h2, http/1.1, got 'h3'"),
        (
            {"alpn": ["h2"]},
            "proxy.listen.tls.alpn: must include http/1.1 (clients without HTTP/2 need it)",
        ),
        ({"alpn": []}, "proxy.listen.tls.alpn: expected a list of h2, http/1.1, got a list"),
        ({"sni": 1}, "proxy.listen.tls.sni: unknown key; known keys: alpn, certificates"),
    ],
)
def test_tls_block_errors(pki, tmp_path, tls, expected):
    block = {"certificates": [{"cert": str(pki["a"].cert), "key": str(pki["a"].key)}], **tls}
    assert error_of(write(tmp_path, {"port": 8443, "tls": block})) == expected


def test_certificates_are_required(tmp_path):
    assert error_of(write(tmp_path, {"port": 8443, "tls": {"alpn": ["http/1.1"]}})) == (
        "proxy.listen.tls.certificates: required key is missing"
    )


def test_listener_ports_must_differ_from_each_other_and_from_admin(tmp_path):
    assert error_of(write(tmp_path, [{"port": 8080}, {"port": 8080}])) == (
        "proxy.listen[1].port: 8080 is already used by proxy.listen[0]"
    )
    assert error_of(write(tmp_path, [{"port": 8080}, {"port": 9901}])) == (
        "proxy.admin.port: must differ from proxy.listen[1].port"
    )
    assert error_of(write(tmp_path, [])) == "proxy.listen: must not be empty"


def test_upstream_tls_defaults_and_checks(pki, tmp_path):
    service = {**SERVICE, "upstream_tls": {"ca": str(pki["ca"].cert)}}
    (loaded,) = load_config(write(tmp_path, {"port": 8080}, [service])).services
    assert loaded.upstream_tls.verify is True and loaded.upstream_tls.server_name is None
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("hello\n")
    for tls, expected in [
        ({"ca": "missing.pem"}, f"no such file: {tmp_path / 'missing.pem'}"),
        ({"ca": "ca.pem"}, "not a PEM CA bundle ("),
        (
            {"server_name": "not a name"},
            "expected a DNS name such as api.internal, got 'not a name'",
        ),
        ({"verify": "yes"}, "expected true or false, got 'yes'"),
    ]:
        path = write(tmp_path, {"port": 8080}, [{**SERVICE, "upstream_tls": tls}])
        key = next(iter(tls))
        assert error_of(path).startswith(f"proxy.services[0].upstream_tls.{key}: {expected}")


def test_upstream_tls_can_come_from_defaults(pki):
    text = yaml.safe_dump(
        {"proxy": {"defaults": {"upstream_tls": {"verify": False}}, "services": [SERVICE]}}
    )
    assert parse_config(text).services[0].upstream_tls.verify is False
