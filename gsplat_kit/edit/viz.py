"""Per-token attention heat maps over the image (the original's show_cross_attention), as one PNG grid."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _heat(x: np.ndarray) -> np.ndarray:
    """[h, w] in [0, 1] -> [h, w, 3] uint8 with a blue-green-yellow-red ramp."""
    stops = np.array([[0, 0, 0.5], [0, 0.6, 1], [0.2, 1, 0.4], [1, 0.9, 0], [0.9, 0.1, 0]])
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return ((stops[i] * (1 - f) + stops[i + 1] * f) * 255).astype(np.uint8)


def attention_grid(controller, prompts, tokenizer, images=None, scale=None, cell: int = 128):
    """PIL image: one row per prompt, one cell per token (start and end tokens included), each the map of
    that token averaged over heads, layers at latent/scale and steps, stretched to its range and laid over
    the generated image when `images` ([P, H, W, 3] uint8 or PIL list) is given."""
    maps = controller.average_maps(scale).float().cpu()  # [P, h, w, K]
    if images is not None:
        images = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    rows = []
    for p, prompt in enumerate(prompts):
        ids = tokenizer(prompt).input_ids
        cells = []
        for n, tid in enumerate(ids):
            m = maps[p, :, :, n]
            # stretched to [min, max] per token (the original divides by the max only, which leaves
            # diffuse maps one flat colour)
            m = ((m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)).numpy()
            heat = np.asarray(Image.fromarray(_heat(m)).resize((cell, cell), Image.BILINEAR))
            if images is not None:
                base = np.asarray(Image.fromarray(images[p].astype(np.uint8)).resize((cell, cell), Image.BILINEAR))
                heat = (0.45 * base + 0.55 * heat).astype(np.uint8)
            canvas = Image.new("RGB", (cell, cell + 22), (255, 255, 255))
            canvas.paste(Image.fromarray(heat), (0, 0))
            label = tokenizer.decode([tid]).strip() or "<>"
            label = {"<|startoftext|>": "<start>", "<|endoftext|>": "<end>"}.get(label, label)[:16]
            ImageDraw.Draw(canvas).text((4, cell + 5), label, fill=(0, 0, 0))
            cells.append(canvas)
        rows.append(cells)
    ncols = max(len(r) for r in rows)
    grid = Image.new("RGB", (ncols * (cell + 4), len(rows) * (cell + 26)), (255, 255, 255))
    for r, cells in enumerate(rows):
        for c, im in enumerate(cells):
            grid.paste(im, (c * (cell + 4), r * (cell + 26)))
    return grid

