"""A minimal viser websocket client in Python: sends camera poses, receives the streamed frames.

It speaks the same wire protocol as viser's web client (msgpack up; zstd-compressed msgpack plus raw
binary buffers down), which lets tests and the benchmark drive the server-side render loop end to end
without a browser.
"""
from __future__ import annotations

import io
import threading
import time

import msgspec.msgpack
import numpy as np
import zstandard


def decode_window(raw: bytes) -> list[dict]:
    """One server->client websocket message -> its list of viser messages (binary fields as bytes)."""
    inner_len = int.from_bytes(raw[0:8], "little")
    comp_len = int.from_bytes(raw[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(raw[16:16 + comp_len], max_output_size=inner_len)
    window = msgspec.msgpack.decode(inner)
    buffers, offset = [], 16 + comp_len
    for n in window.get("binaryBufferLengths", ()):
        offset += (8 - offset % 8) % 8
        buffers.append(raw[offset:offset + n])
        offset += n

    def resolve(v):
        if isinstance(v, dict):
            if "__binary_index" in v and "dtype" in v:
                return buffers[v["__binary_index"]]
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    return [resolve(m) for m in window["messages"]]


class ViserTestClient:
    """Connects like a browser tab; `frames` collects the background images the server streams to it."""

    def __init__(self, url: str, timeout: float = 30.0):
        import viser
        from websockets.sync.client import connect

        ws_url = url.replace("http://", "ws://").replace("https://", "wss://")
        self._ws = connect(ws_url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None,
                           open_timeout=timeout)
        self.frames: list[tuple[float, str, bytes]] = []   # (arrival time, format, encoded image)
        self.messages: list[dict] = []
        self._cv = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        from websockets.exceptions import ConnectionClosed

        try:
            while not self._closed:
                raw = self._ws.recv()
                if not isinstance(raw, bytes):
                    continue
                msgs = decode_window(raw)
                now = time.time()
                with self._cv:
                    for m in msgs:
                        self.messages.append(m)
                        if m.get("type") == "BackgroundImageMessage" and m.get("rgb_data") is not None:
                            self.frames.append((now, m["format"], bytes(m["rgb_data"])))
                    self._cv.notify_all()
        except (ConnectionClosed, OSError):
            pass

    def send(self, type_name: str, **fields):
        """Sends one client->server viser message, e.g. a GUI update or a scene-node click."""
        self._ws.send(msgspec.msgpack.encode({"type": type_name, **fields}))

    def click_node(self, name: str, owner: str = ""):
        """What the page sends when the user clicks scene node `name` (e.g. a camera frustum)."""
        self.send("SceneNodeClickMessage", name=name, instance_index=None, ray_origin=[0.0, 0.0, 0.0],
                  ray_direction=[0.0, 0.0, 1.0], screen_pos=[0.5, 0.5], modifier=None, owner=owner)

    def gui_update(self, uuid: str, **updates):
        """What the page sends when the user changes a GUI input (a button click is value=True)."""
        self.send("GuiUpdateMessage", uuid=uuid, updates=updates)

    def wait_message(self, predicate, timeout: float = 30.0) -> dict | None:
        """Waits for a received message that satisfies predicate(msg); returns it (or None on timeout)."""
        with self._cv:
            found = []

            def check():
                found[:] = [m for m in self.messages if predicate(m)]
                return bool(found)

            self._cv.wait_for(check, timeout=timeout)
            return found[-1] if found else None

    def send_camera(self, camtoworld: np.ndarray, fov_y: float, width: int, height: int,
                    look_at=None, up=(0.0, -1.0, 0.0)):
        """Sends a ViewerCameraMessage (OpenCV camera-to-world pose, vertical fov in radians)."""
        import viser.transforms as vtf

        c2w = np.asarray(camtoworld, np.float64)
        if look_at is None:
            look_at = c2w[:3, 3] + c2w[:3, 2]
        msg = {
            "type": "ViewerCameraMessage",
            "wxyz": [float(x) for x in vtf.SO3.from_matrix(c2w[:3, :3]).wxyz],
            "position": [float(x) for x in c2w[:3, 3]],
            "fov": float(fov_y), "near": 0.01, "far": 1000.0,
            "image_height": int(height), "image_width": int(width),
            "look_at": [float(x) for x in look_at], "up_direction": [float(x) for x in up],
        }
        self._ws.send(msgspec.msgpack.encode(msg))

    def wait_frames(self, count: int, timeout: float = 30.0) -> bool:
        """Waits until at least `count` frames have arrived in total."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self.frames) >= count, timeout=timeout)

    @staticmethod
    def decode(frame) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(frame[2])).convert("RGB"))

    def close(self):
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
