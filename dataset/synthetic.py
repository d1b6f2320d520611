"""``synthetic``: a seeded, procedurally generated 10-class 32x32 RGB image set.

No download, identical bytes on every call (NumPy ``default_rng`` with fixed
seeds: train 20240, val 20241, so the two splits never share samples). Default
sizes: 5000 training / 1000 validation images, exactly balanced (500 / 100 per
class), stored in memory as a uint8 ``N x 32 x 32 x 3`` array (``.data``).

Design. Every class identity is invariant under horizontal flips (the standard
CIFAR-style RandomHorizontalFlip must not change the label), so classes are
texture types x spatial frequency (``low`` / ``high`` cycles per image):

* 0/1 vertical stripes, 2/3 horizontal stripes, 4/5 diagonal stripes (+45 or
  -45 degrees, sign random per sample), 6/7 concentric rings, 8/9 plaids (two
  orthogonal gratings at a random overall angle, second one of random strength)
  -- even class ids are ``low``, odd ones ``high`` frequency.

Every sample draws nuisance factors, so the class has to be read off local
texture and no pixel or colour carries it on its own:

* orientation jitter (Gaussian, ``ORIENT_JITTER_DEG``) and frequency jitter
  (log-normal) -- neighbouring orientations and the two frequencies overlap in
  their tails, weak plaid components look like single gratings, small ring
  patches look like stripes, so some samples are genuinely ambiguous (the set is not 100% separable and a teacher's
  soft labels carry class-similarity information);
* uniformly random phase (a linear model on pixels cannot exploit the grating);
* a Gaussian envelope at a random position and width, random contrast;
* random background colour and grating colour; with probability
  ``COLOUR_CUE_P`` the grating colour is the class's own hue instead (an easy,
  partial cue that small models pick up first);
* a weaker distractor grating of random orientation/frequency/phase;
* 1-3 opaque distractor discs/rectangles of random colour, size and position;
* per-pixel Gaussian noise.

Measured on one CPU core (Adam / SGD, RandomCrop+flip, default sizes): a 5-conv
141k-parameter CNN reaches 72-74% validation accuracy after 40 s (2-3 epochs) and
plateaus near 86% (train 91%) after 20 one-cycle epochs, i.e. the set is not
separable; a 2-conv 1.6k-parameter CNN reaches ~63% after 40 s and ~76% after 20
epochs; a linear model on 8x8-pooled pixels stays at chance (~12%).
"""

import functools

import numpy as np

from .arrays import ArrayImageDataset

NUM_CLASSES = 10
IMAGE_SIZE = 32
DEFAULT_TRAIN_SIZE = 5000
DEFAULT_VAL_SIZE = 1000
TRAIN_SEED = 20240
VAL_SEED = 20241

LOW_FREQ, HIGH_FREQ = 3.0, 5.5       # cycles per 32 px
FREQ_JITTER = 0.18                    # sigma of log-frequency
ORIENT_JITTER_DEG = 13.0
COLOUR_CUE_P = 0.3
NOISE_STD = 0.08
_KINDS = ("vertical", "horizontal", "diagonal", "rings", "plaid")
CLASSES = tuple(f"{_KINDS[c // 2]}_{'low' if c % 2 == 0 else 'high'}" for c in range(NUM_CLASSES))

# Class hues (RGB directions) for the partial colour cue.
_CLASS_COLOURS = np.array([
    [1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.3, 1.0], [1.0, 1.0, 0.1], [1.0, 0.1, 1.0],
    [0.1, 1.0, 1.0], [1.0, 0.6, 0.1], [0.6, 0.1, 1.0], [0.6, 1.0, 0.6], [1.0, 1.0, 1.0],
], dtype=np.float32)


def _f32(x):
    return np.asarray(x, dtype=np.float32)


def _grating(theta, freq, phase, xx, yy):
    """``sin(k . x + phase)`` with wave vector at angle ``theta`` (0: vertical stripes)."""
    k = _f32(2 * np.pi * freq / IMAGE_SIZE)
    kx, ky = (k * _f32(np.cos(theta)))[:, None, None], (k * _f32(np.sin(theta)))[:, None, None]
    return np.sin(kx * xx + ky * yy + _f32(phase)[:, None, None])


def generate(n: int, seed: int):
    """``(data uint8 [n, 32, 32, 3], targets list[int])``; deterministic in ``(n, seed)``."""
    rng = np.random.default_rng(seed)
    s = IMAGE_SIZE
    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    kind, high = labels // 2, (labels % 2 == 1)
    coords = np.arange(s, dtype=np.float32) - (s - 1) / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    xx, yy = xx[None], yy[None]
    two_pi = 2 * np.pi

    # Class-defining texture inside a Gaussian envelope at a random place.
    base = np.select([kind == 0, kind == 1, kind == 2],
                     [0.0, 90.0, np.where(rng.random(n) < 0.5, 45.0, -45.0)],
                     default=rng.uniform(0, 180, n))
    theta = np.deg2rad(base + rng.normal(0, ORIENT_JITTER_DEG, n))
    freq = np.where(high, HIGH_FREQ, LOW_FREQ) * np.exp(rng.normal(0, FREQ_JITTER, n))
    cx, cy = _f32(rng.uniform(-8, 8, n))[:, None, None], _f32(rng.uniform(-8, 8, n))[:, None, None]
    tex = _grating(theta, freq, rng.uniform(0, two_pi, n), xx, yy)
    # plaid: add an orthogonal grating of random relative strength
    plaid = kind == 4
    second = _grating(theta + np.pi / 2, freq, rng.uniform(0, two_pi, n), xx, yy)
    tex += second * _f32(np.where(plaid, rng.uniform(0.2, 1.0, n), 0.0))[:, None, None]
    # rings: replace by concentric rings around the envelope centre
    rings = kind == 3
    if rings.any():
        r = np.sqrt((xx - cx[rings]) ** 2 + (yy - cy[rings]) ** 2)
        ph = _f32(rng.uniform(0, two_pi, n))[rings][:, None, None]
        tex[rings] = np.sin(_f32(two_pi * freq[rings] / s)[:, None, None] * r + ph)
    width = _f32(rng.uniform(6, 12, n))[:, None, None]
    env = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))
    amp = _f32(rng.uniform(0.25, 0.45, n) / np.where(plaid, 1.4, 1.0))[:, None, None]
    tex *= amp * env

    # Distractor grating: random orientation / frequency, weaker, everywhere.
    distract = _grating(rng.uniform(0, np.pi, n), rng.uniform(LOW_FREQ * 0.7, HIGH_FREQ * 1.3, n),
                        rng.uniform(0, two_pi, n), xx, yy)
    distract *= _f32(rng.uniform(0.0, 0.15, n))[:, None, None]

    # Colours: random background, texture colour random or (sometimes) the class hue.
    bg = _f32(rng.uniform(0.25, 0.75, (n, 3)))
    col = _f32(rng.uniform(0.1, 1.0, (n, 3)))
    cue = rng.random(n) < COLOUR_CUE_P
    col[cue] = _CLASS_COLOURS[labels[cue]]
    col /= np.linalg.norm(col, axis=1, keepdims=True) / np.sqrt(3)
    d_col = _f32(rng.uniform(0.1, 1.0, (n, 3)))
    # Compose channel-first (fast broadcasting), transpose to N x H x W x 3 at the end.
    img = np.empty((n, 3, s, s), dtype=np.float32)
    for ch in range(3):
        img[:, ch] = (bg[:, ch, None, None] + tex * col[:, ch, None, None]
                      + distract * d_col[:, ch, None, None])

    # Opaque distractor shapes: 1-3 per image, discs or rectangles.
    n_shapes = rng.integers(1, 4, n)
    for k in range(3):
        sx = _f32(rng.uniform(-14, 14, n))[:, None, None]
        sy = _f32(rng.uniform(-14, 14, n))[:, None, None]
        rr = _f32(rng.uniform(2, 5, n))[:, None, None]
        disc = (rng.random(n) < 0.5)[:, None, None]
        dx, dy = np.abs(xx - sx), np.abs(yy - sy)
        mask = np.where(disc, dx * dx + dy * dy <= rr * rr, (dx <= rr) & (dy <= rr * 0.7))
        mask &= (n_shapes > k)[:, None, None]
        shape_col = _f32(rng.uniform(0, 1, (n, 3)))
        ii, yi, xi = np.nonzero(mask)
        for ch in range(3):
            img[ii, ch, yi, xi] = shape_col[ii, ch]

    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(NOISE_STD)
    img *= 255
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    data = np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))
    return data, labels.tolist()


@functools.lru_cache(maxsize=4)
def _generate_cached(n, seed):
    return generate(n, seed)


def make_synthetic(n: int = DEFAULT_TRAIN_SIZE, seed: int = TRAIN_SEED, transform=None) -> ArrayImageDataset:
    """The synthetic set of ``n`` images drawn with ``seed``. Generated arrays are cached
    per process (a few calls' worth); every call gets its own copy of the pixels."""
    data, targets = _generate_cached(int(n), int(seed))
    data, targets = data.copy(), list(targets)
    return ArrayImageDataset(data, targets, transform, CLASSES)


def channel_stats(data: np.ndarray):
    """Per-channel ``(mean, std)`` of a uint8 ``N x H x W x 3`` array, in [0, 1] units
    (exact, from per-channel histograms)."""
    flat = np.asarray(data, dtype=np.uint8).reshape(-1, 3)
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for ch in range(3):
        h = np.bincount(flat[:, ch], minlength=256).astype(np.float64)
        h /= h.sum()
        m = float((h * v).sum())
        mean.append(m)
        std.append(float(np.sqrt(max((h * v * v).sum() - m * m, 0.0))))
    return tuple(mean), tuple(std)
