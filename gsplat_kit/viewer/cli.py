"""`gsplat-kit view PATH`: the real-time web viewer."""
from __future__ import annotations

import time

from gsplat_kit.common.options import check_range


def register(subparsers):
    p = subparsers.add_parser(
        "view", help="open a .ply, checkpoint or run folder in the web viewer",
        description="Serves a web viewer (viser) for a 3DGS .ply (any tool's), a gsplat_kit checkpoint, or a "
                    "run folder (point_cloud.ply + config.json, or the original 3DGS output layout). Prints the "
                    "URL; stop with Ctrl+C.")
    p.add_argument("path", help=".ply, checkpoint (.pt) or run folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: 8080, or the next free one if taken; 0: any free port)")
    p.add_argument("--renderer", choices=("client", "server"), default=None,
                   help="initial rendering path (default: server with CUDA, else client); switchable in the page")
    p.add_argument("--device", default=None, help="device for server-side rendering (default: cuda if available)")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="longest side of server-rendered frames (default 1920 with CUDA, 1280 on the CPU)")
    p.add_argument("--client-budget", type=int, default=500_000,
                   help="most Gaussians sent to the browser for WebGL splatting (the most visible ones)")
    p.set_defaults(func=_view)


def _view(args) -> int:
    from gsplat_kit.viewer.server import check_address

    if args.max_resolution is not None:
        check_range("--max-resolution", args.max_resolution, lo=16)
    check_range("--client-budget", args.client_budget, lo=1)
    check_address(args.host, 0 if args.port is None else args.port)   # before torch loads: a bad one fails at once

    from gsplat_kit.viewer.app import ViewerApp   # torch: not needed for --help or a bad address
    app = ViewerApp(args.host, args.port, render_path=args.renderer, device=args.device,
                    client_budget=args.client_budget, max_resolution=args.max_resolution)
    app.panels.path.value = args.path
    print(f"gsplat_kit viewer: {app.url}  (Ctrl+C to stop)", flush=True)
    # The page is live while the scene loads; a bad file is reported and the server keeps running
    # (fix the file or type another path in the page's Scene panel).
    app.load(args.path)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:   # Ctrl+C is how a viewer is stopped: not an error
        return 0
    finally:
        app.close()
