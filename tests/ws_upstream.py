"""A WebSocket echo upstream for the tunnel tests and the bench:
``python -m tests.ws_upstream --port N``.

Every message comes back as it came, except the text ``whoami``, answered with
JSON: the request path (query included), the subprotocol chosen, and the
X-Forwarded-Proto it was told. ``/refuse`` is answered 403 with no upgrade.
Subprotocols offered: chat, superchat.
"""

from __future__ import annotations

import argparse
import json
from http import HTTPStatus

from websockets.sync.server import serve


def echo(websocket) -> None:
    for message in websocket:
        if message == "whoami":
            request = websocket.request
            websocket.send(
                json.dumps(
                    {
                        "path": request.path,
                        "subprotocol": websocket.subprotocol,
                        "proto": request.headers.get("X-Forwarded-Proto"),
                    }
                )
            )
        else:
            websocket.send(message)


def refuse(connection, request):
    if request.path.startswith("/refuse"):
        return connection.respond(HTTPStatus.FORBIDDEN, "no tunnel for you\n")
    return None


def choose_subprotocol(connection, offered):
    """The first offered one we speak; none offered is fine too."""
    return next((name for name in offered if name in ("chat", "superchat")), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with serve(
        echo,
        "127.0.0.1",
        args.port,
        process_request=refuse,
        select_subprotocol=choose_subprotocol,
        max_size=2**22,
        compression=None,
    ) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
