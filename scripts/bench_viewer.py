"""Viewer benchmark: server-side frames per second for 100k and 1M Gaussian scenes.

For each scene and device it reports
  - render fps: one full-resolution rasterisation (colour + depth), median over repeats;
  - frame fps:  the same plus encoding (JPEG colour + PNG depth): the full frame the server sends when
                the camera rests;
  - moving: frames per second a client actually receives over the websocket while its camera keeps
            moving, with the adaptive resolution the loop settles at (target --target-fps).

Usage: python scripts/bench_viewer.py [--sizes 100000 1000000] [--width 1280 --height 720]
       [--devices cpu cuda] [--repeats 3] [--moving-seconds 8]
The scenes are synthetic, so the figures do not depend on a trained model: by default
gsplat_kit.viewer.synthetic.room_splats (mostly opaque surface splats on the walls of a room and on
objects in it, 5 % floaters, degree-3 SH, seen from inside: every pixel covered, as in a capture);
--scene cloud is a semi-transparent random cube seen from outside (no early ray termination).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def sharp_fps(renderer, view, w, h, settings, repeats):
    """(render-only fps, full-frame fps): rasterisation alone, and with depth + JPEG/PNG encoding."""
    from gsplat_kit.viewer.stream import encode_frame

    render_t, frame_t = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        img, depth = renderer.render_frame(view.camtoworld, view.fov_y, w, h, settings)
        t1 = time.perf_counter()
        encode_frame(img, depth, 90)      # what send_frame queues to a page
        t2 = time.perf_counter()
        if i > 0:  # the first call warms caches / CUDA
            render_t.append(t1 - t0)
            frame_t.append(t2 - t0)
    return 1.0 / statistics.median(render_t), 1.0 / statistics.median(frame_t)


def moving_fps(app, views, w, h, seconds):
    """Moves the client's camera along an orbit at 30 Hz and counts the frames that come back."""
    from gsplat_kit.viewer.wsclient import ViserTestClient

    with ViserTestClient(app.url) as client:
        client.send_camera(views[0].camtoworld, views[0].fov_y, w, h)
        app.wait_for_client(30)
        client.wait_frames(2, 120)      # initial background + first sharp frame
        time.sleep(0.5)
        t_start = time.time()
        n0 = len(client.frames)
        k = 0
        while time.time() - t_start < seconds:
            v = views[k % len(views)]
            client.send_camera(v.camtoworld, v.fov_y, w, h)
            k += 1
            time.sleep(1 / 30)
        elapsed = time.time() - t_start
        frames = client.frames[n0:]
        sizes = [ViserTestClient.decode(f).shape[:2] for f in frames[-3:]] if frames else []
    return len(frames) / elapsed, sizes


def camera_path(scene, n, w, h, fov):
    """Slow pans (consecutive poses differ slightly, like a mouse drag)."""
    from gsplat_kit.viewer.synthetic import look_at_view

    views = []
    for i in range(n):
        a = 2 * math.pi * i / n * 0.1
        if scene == "room":   # standing inside the room, turning
            eye = np.array([0.0, -0.2, -1.6])
            target = eye + np.array([math.sin(a - 0.3), 0.1, math.cos(a - 0.3)])
        else:                 # outside the cube, orbiting it
            eye = 5.0 * np.array([math.sin(a), -0.3, -math.cos(a)])
            target = np.zeros(3)
        views.append(look_at_view(eye, target, [0, -1, 0], w, h, fov))
    return views


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--moving-seconds", type=float, default=8.0)
    ap.add_argument("--target-fps", type=float, default=15.0)
    ap.add_argument("--scene", choices=("room", "cloud"), default="room")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    from gsplat_kit.viewer.app import ViewerApp
    from gsplat_kit.viewer.render import RenderSettings
    from gsplat_kit.viewer.synthetic import cloud_splats, room_splats

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    w, h = args.width, args.height
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; scene: {args.scene}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    print(f"{'device':6} {'gaussians':>10} {'res':>10} {'render fps':>11} {'frame fps':>10} {'moving fps':>11} "
          f"{'moving res':>11}")
    rows = []
    for n in args.sizes:
        splats = (room_splats if args.scene == "room" else cloud_splats)(n, seed=0)
        views = camera_path(args.scene, 64, w, h, 60)
        for dev in devices:
            app = ViewerApp("127.0.0.1", 0, render_path="server", device=dev, max_resolution=max(w, h),
                            target_fps=args.target_fps)
            try:
                app.set_scene(splats, None, f"cloud {n}")
                rfps, ffps = sharp_fps(app.renderer, views[0], w, h, RenderSettings(), args.repeats)
                # long enough for several frames even when one full frame takes seconds
                mfps, sizes = moving_fps(app, views, w, h, max(args.moving_seconds, 6.0 / ffps))
                res = f"{sizes[-1][1]}x{sizes[-1][0]}" if sizes else "-"
                print(f"{dev:6} {n:>10,} {f'{w}x{h}':>10} {rfps:>11.2f} {ffps:>10.2f} {mfps:>11.2f} {res:>11}",
                      flush=True)
                rows.append({"device": dev, "gaussians": n, "scene": args.scene, "resolution": f"{w}x{h}",
                             "render_fps": rfps, "frame_fps": ffps, "moving_fps": mfps, "moving_resolution": res})
                if args.json:  # after every row: a run stopped by a time limit keeps the rows it finished
                    from gsplat_kit.common.atomic import write_json

                    write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows})
            finally:
                app.close()


if __name__ == "__main__":
    main()
