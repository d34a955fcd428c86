"""Camera images as the policy sees them: one resize rule and the train-time augmentations.

Every path that hands an image to the policy — the learner's image cache, the policy server,
in-process rollouts — resizes it with :func:`resize_rgb` (OpenCV ``INTER_AREA``) to the
policy's ``image_size``, so training and serving see the same pixels.

Augmentations (``FlowPolicyConfig.image_augment``) run on uint8 batches ``[B, h, w, 3]`` in
the learner's batch sampler, never at serving time:

* ``"shift"`` (DrQ's random shift): pad by ``p`` pixels replicating the edge, crop back to
  ``h × w`` at a random offset: out[b, i, j] = x[b, clip(i + dy_b − p, 0, h−1),
  clip(j + dx_b − p, 0, w−1)], dy_b, dx_b ~ U{0, …, 2p}.
* ``"crop"``: a random ``(h − 2p) × (w − 2p)`` window resized back to ``h × w`` by nearest
  neighbour: out[b, i, j] = x[b, oy_b + ⌊i (h − 2p) / h⌋, ox_b + ⌊j (w − 2p) / w⌋],
  oy_b, ox_b ~ U{0, …, 2p}.
"""

from __future__ import annotations

import numpy as np

from habc_policy.core.configuration_flow import IMAGE_AUGMENTS

__all__ = ["IMAGE_AUGMENTS", "augment_images", "random_crop", "random_shift", "resize_rgb"]


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[h, w, 3]`` → uint8 ``[size[0], size[1], 3]`` (INTER_AREA; a copy if equal)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [h, w, 3], got {image.dtype} {image.shape}")
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _gather(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """out[b, i, j] = images[b, rows[b, i], cols[b, j]] for uint8 [B, h, w, 3].

    One flat gather of 3-byte pixels (a void view), several times faster than broadcast
    fancy indexing on a 4-D array."""
    b, h, w = images.shape[:3]
    flat = (np.arange(b)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    pixels = np.ascontiguousarray(images).view(np.dtype((np.void, 3))).reshape(-1)
    return pixels[flat.ravel()].view(np.uint8).reshape(b, rows.shape[1], cols.shape[1], 3)


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ random shift of uint8 ``[B, h, w, 3]`` by up to ``pad`` px (edge-replicate padding).

    Per sample: one slice copy of the overlapping region, then the uncovered rows and columns
    replicate the edge (equal to pad-then-crop, without materializing the padded batch)."""
    if pad <= 0:
        return images
    b, h, w = images.shape[:3]
    dy = rng.integers(0, 2 * pad + 1, size=b) - pad
    dx = rng.integers(0, 2 * pad + 1, size=b) - pad
    out = np.empty_like(images)
    for i in range(b):
        sy, sx, src, dst = int(dy[i]), int(dx[i]), images[i], out[i]
        y0, y1 = max(0, -sy), min(h, h - sy)  # out rows whose source row is inside
        x0, x1 = max(0, -sx), min(w, w - sx)
        dst[y0:y1, x0:x1] = src[y0 + sy : y1 + sy, x0 + sx : x1 + sx]
        dst[:y0, x0:x1] = src[0, x0 + sx : x1 + sx]
        dst[y1:, x0:x1] = src[h - 1, x0 + sx : x1 + sx]
        dst[:, :x0] = dst[:, x0 : x0 + 1]
        dst[:, x1:] = dst[:, x1 - 1 : x1]
    return out


def random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random ``(h − 2·pad) × (w − 2·pad)`` crop of uint8 ``[B, h, w, 3]``, resized back to
    ``h × w`` by nearest neighbour."""
    if pad <= 0:
        return images
    b, h, w = images.shape[:3]
    ch, cw = h - 2 * pad, w - 2 * pad
    if ch < 1 or cw < 1:
        raise ValueError(f"augment pad {pad} leaves no crop of a {h}x{w} image")
    oy = rng.integers(0, 2 * pad + 1, size=b)
    ox = rng.integers(0, 2 * pad + 1, size=b)
    rows = oy[:, None] + (np.arange(h) * ch // h)[None, :]
    cols = ox[:, None] + (np.arange(w) * cw // w)[None, :]
    return _gather(images, rows, cols)


def augment_images(images: np.ndarray, kind: str, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Apply the augmentation ``kind`` (one of :data:`IMAGE_AUGMENTS`) to a uint8 batch."""
    if kind == "none":
        return images
    if kind == "shift":
        return random_shift(images, pad, rng)
    if kind == "crop":
        return random_crop(images, pad, rng)
    raise ValueError(f"image_augment={kind!r} is not one of {IMAGE_AUGMENTS}")
