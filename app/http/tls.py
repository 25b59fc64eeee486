"""TLS termination: a listener's certificates chosen by SNI, ALPN, a bounded handshake.

As HAProxy's ``bind ... ssl crt DIR alpn`` and nginx's ``ssl_certificate`` per
``server_name``: the first certificate is the default, served when the client
sends no SNI or a name no certificate has; every other one is chosen by the DNS
names in its SAN (a ``*.`` wildcard covers one label). The handshake is
bounded by ``limits.client_timeout``: a client that connects and sends nothing,
or speaks plain HTTP to a TLS port, is closed and costs the worker nothing more.

Contexts are built in the worker, after gevent patched ``ssl``, so their
sockets are cooperative.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile

from app.config import ListenTLS

log = logging.getLogger("gunicorn.error")


def server_context(tls: ListenTLS) -> ssl.SSLContext:
    """The listener's context; its SNI callback switches to the certificate named."""
    contexts = [_certificate_context(certificate, tls.alpn) for certificate in tls.certificates]
    default = contexts[0]
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for certificate, context in zip(tls.certificates, contexts, strict=True):
        for name in certificate.names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], context)
            else:
                exact.setdefault(name, context)

    def choose(sock, server_name, initial) -> None:
        if server_name:
            name = server_name.lower().rstrip(".")
            context = exact.get(name) or wildcard.get(name.partition(".")[2])
            if context is not None and context is not initial:
                sock.context = context

    default.sni_callback = choose
    return default


def _certificate_context(certificate, alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The certificate and key as the master validated them (certificate.pem),
    # not the files, which may have been replaced since. ssl loads only from a
    # path: a private directory holds them for the moment of loading.
    with tempfile.TemporaryDirectory(prefix="lbproxy-tls-") as directory:
        path = os.path.join(directory, "pair.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(certificate.pem)
        context.load_cert_chain(path)
    context.set_alpn_protocols(list(alpn))
    return context


def handshake(context: ssl.SSLContext, client, timeout: float):
    """The client's TLS socket once the handshake is done, or None (the client is closed).

    ``timeout`` bounds the whole handshake, not only each read: a client
    dripping its ClientHello a byte at a time is cut at the same deadline.
    """
    import gevent

    client.settimeout(timeout)
    deadline = gevent.Timeout(timeout, TimeoutError("the TLS handshake took too long"))
    deadline.start()
    tls = None
    try:
        tls = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except (OSError, ValueError) as error:  # ssl.SSLError and timeouts are OSErrors
        log.debug("lbproxy: TLS handshake failed: %s", error)
        # The TLS socket took the connection over: closing only the plain one
        # would leave it open for as long as anything refers to it.
        for sock in (tls, client):
            if sock is not None:
                sock.close()
        return None
    finally:
        deadline.close()
    return tls


def is_tls(sock) -> bool:
    """Whether a client socket is a TLS one. ``ssl.SSLSocket`` is looked up at
    call time: in a worker, gevent's patch made it gevent's class."""
    return isinstance(sock, ssl.SSLSocket)
