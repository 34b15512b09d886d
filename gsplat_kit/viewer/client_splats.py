"""Client-side (WebGL) splatting: the Gaussians converted to viser's splat format, sent in chunks.

The browser sorts and blends the splats itself, so the server needs no GPU. Large scenes are cut to a
budget of the most visible Gaussians (opacity x projected area) and sent as several nodes, so the
page stays responsive while the data streams in; the server-side path always renders all of them.
"""
from __future__ import annotations

import threading
import time

import torch

from gsplat_kit.scene.splats import SH_C0, Splats, quat_to_rotmat

CHUNK = 100_000          # Gaussians per client-side splat node


def select_for_client(splats, budget: int) -> torch.Tensor | None:
    """Indices of the `budget` most visible Gaussians, or None when all fit."""
    s = splats if isinstance(splats, Splats) else Splats(splats)
    if budget <= 0 or s.num <= budget:
        return None
    with torch.no_grad():
        act = s.to(dtype=torch.float32).activated()
        # a Gaussian's screen footprint grows with the product of its two largest axes
        area = act["scales"].prod(-1) / act["scales"].min(-1).values
        return torch.topk(act["opacities"] * area, budget, sorted=False).indices.sort().values


def client_buffers(splats, scale_modifier: float = 1.0, budget: int = 0):
    """Returns numpy (centers [M,3], covariances [M,3,3], rgbs [M,3], opacities [M,1]) for viser."""
    s = splats if isinstance(splats, Splats) else Splats(splats)
    idx = select_for_client(s, budget)
    with torch.no_grad():
        s = s.to("cpu", torch.float32)
        if idx is not None:
            s = Splats({k: v[idx] for k, v in s.items()})
        act = s.activated()
        M = quat_to_rotmat(act["quats"]) * (act["scales"] * float(scale_modifier))[:, None, :]   # R diag(s)
        cov = M @ M.transpose(1, 2)                                                            # R S S^T R^T
        rgb = (SH_C0 * s["sh0"].reshape(-1, 3) + 0.5).clamp(0.0, 1.0)
    return act["means"].numpy(), cov.numpy(), rgb.numpy(), act["opacities"][:, None].numpy()


def chunks(n: int, size: int):
    """[start, stop) ranges that cover n items in pieces of at most `size`."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class ClientSplats:
    """The scene's splat nodes in the page (/splats/0, /splats/1, ...): uploaded when stale and the client
    path shows them, updated in place (no flicker during live training), hidden for the server path."""

    def __init__(self, scene_api, flush):
        self._scene_api, self._flush = scene_api, flush
        self.handles: list = []
        self.stale = True
        self._lock = threading.Lock()

    def set_visible(self, visible: bool):
        for h in self.handles:
            h.visible = visible

    def upload(self, splats: Splats, scale_modifier: float, budget: int, world_scale: float,
               visible: bool) -> int | None:
        """Sends the splats if they changed since the last upload; returns how many the page shows (None:
        nothing to send)."""
        with self._lock:
            if not self.stale:
                return None
            self.stale = False
            centers, covs, rgbs, opac = client_buffers(splats, scale_modifier, budget)
            centers, covs = centers * world_scale, covs * (world_scale * world_scale)
            old, self.handles = self.handles, []
            n = centers.shape[0]
            for i, (a, b) in enumerate(chunks(n, CHUNK)):
                part = (centers[a:b], covs[a:b], rgbs[a:b], opac[a:b])
                if i < len(old):
                    old[i].set_gaussians(*part)
                    self.handles.append(old[i])
                else:
                    self.handles.append(self._scene_api.add_gaussian_splats(
                        f"/splats/{i}", centers=part[0], covariances=part[1], rgbs=part[2], opacities=part[3],
                        visible=visible))
                if b < n:
                    self._flush()
                    time.sleep(0.02)  # let the page digest a chunk before the next one
            for h in old[len(self.handles):]:
                h.remove()
            return n

