"""Test certificates made with the ``openssl`` CLI: a CA, and ECDSA P-256 leaves with SAN.

For the tests, the benchmark and the TLS demo. Nothing here is for production:
keys are written unencrypted next to the certificates.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str = "lbproxy test CA", days: int = 30) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    ca = Pair(directory / f"{_slug(name)}.pem", directory / f"{_slug(name)}.key")
    _openssl("req", "-x509", *EC, "-keyout", ca.key, "-out", ca.cert, "-days", days,
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return ca


def make_leaf(
    directory: Path,
    ca: Pair,
    names: list[str],
    ips: tuple[str, ...] = (),
    days: int = 30,
    stem: str | None = None,
) -> Pair:
    """A server certificate for ``names`` (DNS) and ``ips``, signed by ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or _slug(names[0] if names else ips[0])
    leaf = Pair(directory / f"{stem}.pem", directory / f"{stem}.key")
    csr = directory / f"{stem}.csr"
    extensions = directory / f"{stem}.ext"
    san = ",".join([f"DNS:{name}" for name in names] + [f"IP:{ip}" for ip in ips])
    extensions.write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    subject = f"/CN={names[0] if names else ips[0]}"
    _openssl("req", *EC, "-keyout", leaf.key, "-out", csr, "-subj", subject)
    signing = ["-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-days", days]
    _openssl("x509", "-req", "-in", csr, *signing, "-out", leaf.cert, "-extfile", extensions)
    return leaf


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in name).strip("-").lower()
