"""Heatmaps of CKA matrices with group blocks, as numpy images or PNG files.

numpy + Pillow only; imports nothing from the project.

Geometry (so callers and tests can locate pixels): the matrix area is ``rows*cell`` by
``cols*cell`` pixels; entry (i, j) fills the square whose top-left corner is
``(top + i*cell, left + j*cell)`` (row, column). ``top``/``left`` are 0 unless a title or labels
are drawn (``heatmap_layout`` returns them). Without title, labels and colour bar the image is
exactly ``(rows*cell, cols*cell, 3)``.

Group blocks: group k covers rows ``row_groups[k]`` and columns ``col_groups[k]``; its outline is
drawn *inside* the block in ``line_color``, ``line_width`` pixels thick: the outermost pixel rows
``top + r0*cell`` and ``top + (r1+1)*cell - 1`` and columns ``left + c0*cell`` and
``left + (c1+1)*cell - 1`` (r0..r1 / c0..c1: the group's first..last row / column).

* square teacher matrix: pass ``row_groups`` only (the columns use the same groups) — blocks on
  the diagonal;
* student x teacher: ``row_groups`` = student groups, ``col_groups`` = teacher groups, paired by
  index (same number of groups);
* only one of them for a non-square matrix: full-width (or full-height) separator lines at the
  group boundaries, ``line_width`` pixels starting at the boundary.

Colours: values are clipped to ``[vmin, vmax]`` (default [0, 1]) and mapped through a
viridis-like perceptual ramp (five anchor colours, linear interpolation in sRGB); NaN is grey.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colormap", "heatmap_image", "heatmap_layout", "save_heatmap_png", "ANCHORS"]

# Anchor colours of the viridis ramp at 0, .25, .5, .75, 1 (dark purple -> blue -> teal -> green
# -> yellow): monotonic lightness, readable in grey scale and for common colour-vision deficits.
ANCHORS = np.array([
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
], dtype=np.float64)
NAN_COLOR = (128, 128, 128)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def colormap(values, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map an array of values to uint8 RGB (shape ``values.shape + (3,)``)."""
    v = np.asarray(values, dtype=np.float64)
    nan = ~np.isfinite(v)
    span = float(vmax - vmin) if vmax > vmin else 1.0
    t = np.clip((np.where(nan, vmin, v) - vmin) / span, 0.0, 1.0)
    pos = t * (len(ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = ANCHORS[lo] * (1.0 - frac) + ANCHORS[lo + 1] * frac
    rgb = np.rint(rgb).astype(np.uint8)
    rgb[nan] = NAN_COLOR
    return rgb


def _font():
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def heatmap_layout(shape, cell: int = 16, title: Optional[str] = None,
                   row_labels: Optional[Sequence[str]] = None,
                   col_labels: Optional[Sequence[str]] = None, colorbar: bool = False) -> dict:
    """Pixel layout: ``top``, ``left`` (matrix origin), ``height``, ``width`` of the image."""
    rows, cols = int(shape[0]), int(shape[1])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font()
    pad = 4
    top = left = 0
    if title:
        top += _text_size(probe, title, font)[1] + 2 * pad
    if col_labels is not None:
        top += max([_text_size(probe, str(s), font)[0] for s in col_labels] + [0]) + 2 * pad
    if row_labels is not None:
        left += max([_text_size(probe, str(s), font)[0] for s in row_labels] + [0]) + 2 * pad
    width = left + cols * cell
    height = top + rows * cell
    bar = None
    if colorbar:
        bar_w = max(8, cell // 2)
        label_w = max(_text_size(probe, s, font)[0] for s in ("0.00", "1.00", "-1.00"))
        bar = {"x": width + 2 * pad, "width": bar_w}
        width += 3 * pad + bar_w + label_w + pad
    if title or colorbar:
        height += pad
    return {"top": top, "left": left, "height": height, "width": width, "bar": bar, "pad": pad}


def _spans(groups, count: int, what: str):
    spans = []
    # Paired groups may come in any order (e.g. a reversed pairing); in order they must tile.
    flat = [i for g in sorted(groups, key=lambda g: g[0] if len(g) else -1) for i in g]
    if any(len(g) == 0 for g in groups) or flat != list(range(count)):
        raise ValueError(f"{what} must be non-empty contiguous runs covering 0..{count - 1}, got {groups}")
    for g in groups:
        spans.append((int(g[0]), int(g[-1])))
    return spans


def heatmap_image(matrix, row_groups: Optional[Sequence[Sequence[int]]] = None,
                  col_groups: Optional[Sequence[Sequence[int]]] = None, cell: int = 16, *,
                  title: Optional[str] = None, row_labels: Optional[Sequence[str]] = None,
                  col_labels: Optional[Sequence[str]] = None, vmin: float = 0.0,
                  vmax: float = 1.0, line_color=(255, 0, 0), line_width: int = 2,
                  colorbar: bool = False) -> np.ndarray:
    """Render ``matrix`` (rows x cols, values clipped to [vmin, vmax]) as an H x W x 3 uint8 image.

    See the module docstring for the geometry and how groups are drawn.
    """
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().double().numpy()
    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.size == 0:
        raise ValueError(f"heatmap needs a non-empty 2-D matrix, got shape {M.shape}")
    if cell < 1 or line_width < 1:
        raise ValueError("cell and line_width must be >= 1")
    rows, cols = M.shape
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"{len(col_labels)} column labels for {cols} columns")
    lay = heatmap_layout(M.shape, cell, title, row_labels, col_labels, colorbar)
    top, left = lay["top"], lay["left"]
    img = np.empty((lay["height"], lay["width"], 3), dtype=np.uint8)
    img[...] = BACKGROUND
    body = np.repeat(np.repeat(colormap(M, vmin, vmax), cell, axis=0), cell, axis=1)
    img[top:top + rows * cell, left:left + cols * cell] = body

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    color = tuple(int(c) for c in line_color)
    lw = int(line_width)
    if row_groups is not None and col_groups is None and rows == cols:
        col_groups = row_groups
    if row_groups is not None and col_groups is not None:
        rs = _spans(row_groups, rows, "row_groups")
        cs = _spans(col_groups, cols, "col_groups")
        if len(rs) != len(cs):
            raise ValueError(f"row_groups ({len(rs)}) and col_groups ({len(cs)}) must pair up by index")
        for (r0, r1), (c0, c1) in zip(rs, cs):
            draw.rectangle([left + c0 * cell, top + r0 * cell,
                            left + (c1 + 1) * cell - 1, top + (r1 + 1) * cell - 1],
                           outline=color, width=lw)
    elif row_groups is not None:
        for r0, _ in _spans(row_groups, rows, "row_groups")[1:]:
            y = top + r0 * cell
            draw.rectangle([left, y, left + cols * cell - 1, min(y + lw, top + rows * cell) - 1], fill=color)
    elif col_groups is not None:
        for c0, _ in _spans(col_groups, cols, "col_groups")[1:]:
            x = left + c0 * cell
            draw.rectangle([x, top, min(x + lw, left + cols * cell) - 1, top + rows * cell - 1], fill=color)

    font = _font()
    pad = lay["pad"]
    if title:
        draw.text((pad, pad), title, fill=TEXT_COLOR, font=font)
    if row_labels is not None:
        for i, s in enumerate(row_labels):
            tw, th = _text_size(draw, str(s), font)
            draw.text((left - pad - tw, top + i * cell + (cell - th) // 2), str(s),
                      fill=TEXT_COLOR, font=font)
    if col_labels is not None:
        for j, s in enumerate(col_labels):
            tw, th = _text_size(draw, str(s), font)
            tmp = Image.new("RGB", (tw + 2, th + 4), BACKGROUND)
            ImageDraw.Draw(tmp).text((1, 0), str(s), fill=TEXT_COLOR, font=font)
            rot = tmp.rotate(90, expand=True)
            pil.paste(rot, (left + j * cell + max(0, (cell - rot.width) // 2),
                            top - pad - rot.height))
    if lay["bar"] is not None:
        bx, bw = lay["bar"]["x"], lay["bar"]["width"]
        h = rows * cell
        ramp = np.linspace(vmax, vmin, h)[:, None].repeat(bw, axis=1)
        pil.paste(Image.fromarray(colormap(ramp, vmin, vmax)), (bx, top))
        for v, y in ((vmax, top), (vmin, top + h - 10)):
            draw.text((bx + bw + pad, y), f"{v:.2f}", fill=TEXT_COLOR, font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def save_heatmap_png(path: str, matrix, row_groups=None, col_groups=None, cell: int = 16,
                     **kwargs) -> str:
    """Render with :func:`heatmap_image` and write a PNG (parent folders created); returns path."""
    img = heatmap_image(matrix, row_groups, col_groups, cell, **kwargs)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")
    return path
