"""Starting the viewer's web server, failing fast on an address it cannot listen on.

viser retries the next port on any OSError, forever, and its server thread dies silently on a port out
of range or a host that does not resolve, leaving the caller waiting. So the address is checked here
first (one line naming it, a `UserError`: `gsplat-kit view` and `train --viewer` exit 2 at once), and an
explicit port must be the one viser binds.
"""
from __future__ import annotations

import errno
import socket

import viser

from gsplat_kit.common.errors import UserError

DEFAULT_PORT = 8080   # with port=None: this one, or the next free one above it


def check_address(host: str, port: int) -> None:
    """Raises a UserError unless a TCP server can listen on host:port now (port 0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"viewer port {port!r} is out of range (0-65535; 0 picks a free port)")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"viewer host {host!r} cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            # the options asyncio's server uses, so that this check agrees with the real bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                hint = (" (another program listens there: choose another port, or 0 for any free one)"
                        if e.errno == errno.EADDRINUSE else "")
                raise UserError(f"the viewer cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


def start_server(host: str, port: int | None, label: str) -> viser.ViserServer:
    """A running viser server on host:port (port None: DEFAULT_PORT or the next free one; 0: any free one)."""
    check_address(host, 0 if port is None else port)   # None: viser searches from DEFAULT_PORT
    server = viser.ViserServer(host=host, port=DEFAULT_PORT if port is None else port, label=label, verbose=False)
    if port and server.get_port() != port:   # taken between the check and viser's bind: viser moved on
        server.stop()
        raise UserError(f"the viewer cannot listen on {host}:{port}: the port was taken meanwhile")
    return server
