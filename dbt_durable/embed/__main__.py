"""``python -m dbt_durable.embed [--host 127.0.0.1] [--port 8765]``: serve the local endpoint.

Prints ``listening on http://HOST:PORT/v1`` (the base URL for flows) once it accepts
connections; ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import socket
import sys

from dbt_durable.embed.server import create_app


def main(argv: list[str] | None = None) -> None:
    """Load the model, bind the socket, announce the base URL, serve until killed."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m dbt_durable.embed", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    app = create_app()
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    shown = f"[{host}]" if ":" in host else host

    # Announce only once uvicorn is listening, so a reader may connect at once.
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        print(f"listening on http://{shown}:{port}/v1", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
