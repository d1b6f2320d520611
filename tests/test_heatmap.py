"""Heatmap rendering: geometry, colours, group outlines, PNG round trip."""
import numpy as np
import pytest
from PIL import Image

from cka.heatmap import ANCHORS, colormap, heatmap_image, heatmap_layout, save_heatmap_png

RED = np.array([255, 0, 0], dtype=np.uint8)


def _matrix(rows, cols, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, size=(rows, cols))


def test_shape_and_cell_colours():
    M = _matrix(5, 7)
    M[0, 0], M[1, 1], M[2, 2] = -0.5, 1.7, np.nan
    img = heatmap_image(M, cell=6)
    assert img.shape == (30, 42, 3) and img.dtype == np.uint8
    cmap = colormap(M)
    for i in range(5):
        for j in range(7):
            block = img[i * 6:(i + 1) * 6, j * 6:(j + 1) * 6]
            assert (block == cmap[i, j]).all()
    assert (img[0, 0] == ANCHORS[0]).all()          # clipped to 0
    assert (img[6, 6] == ANCHORS[-1]).all()         # clipped to 1
    assert (img[12, 12] == 128).all()               # NaN is grey


def test_colormap_monotone_lightness():
    rgb = colormap(np.linspace(0, 1, 50)).astype(float)
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lum) > 0)


def _outline_pixels(img, r0, r1, c0, c1, cell, lw, top=0, left=0):
    y0, y1 = top + r0 * cell, top + (r1 + 1) * cell - 1
    x0, x1 = left + c0 * cell, left + (c1 + 1) * cell - 1
    edges = [img[y0:y0 + lw, x0:x1 + 1], img[y1 - lw + 1:y1 + 1, x0:x1 + 1],
             img[y0:y1 + 1, x0:x0 + lw], img[y0:y1 + 1, x1 - lw + 1:x1 + 1]]
    return all((e == RED).all() for e in edges)


def test_square_groups_on_diagonal():
    M = _matrix(8, 8, seed=1)
    groups = [[0, 1, 2], [3, 4], [5, 6, 7]]
    cell, lw = 10, 2
    img = heatmap_image(M, groups, cell=cell, line_width=lw)
    assert img.shape == (80, 80, 3)
    for g in groups:
        assert _outline_pixels(img, g[0], g[-1], g[0], g[-1], cell, lw)
    # interior of a block and off-diagonal cells keep the colormap colour
    assert (img[15, 15] == colormap(M)[1, 1]).all()
    assert (img[5, 75] == colormap(M)[0, 7]).all()
    assert not (img[5, 75] == RED).all()


def test_student_teacher_pairing():
    M = _matrix(4, 16, seed=2)
    rows = [[0], [1], [2], [3]]
    cols = [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15]]
    cell, lw = 8, 1
    img = heatmap_image(M, rows, cols, cell=cell, line_width=lw)
    assert img.shape == (32, 128, 3)
    for r, c in zip(rows, cols):
        assert _outline_pixels(img, r[0], r[-1], c[0], c[-1], cell, lw)
    assert (img[3, 100] == colormap(M)[0, 12]).all()       # cell outside its row's block
    with pytest.raises(ValueError, match="pair up"):
        heatmap_image(M, rows[:3] + [[3]], cols[:3] + [[12, 13], [14, 15]])
    with pytest.raises(ValueError, match="contiguous"):
        heatmap_image(M, [[0, 2], [1, 3]], cols)


def test_separator_lines_for_one_sided_groups():
    M = _matrix(4, 6, seed=3)
    img = heatmap_image(M, col_groups=[[0, 1], [2, 3, 4, 5]], cell=5, line_width=2)
    assert (img[:, 10:12] == RED).all()
    assert not (img[:, 12] == RED).all()


def test_labels_title_colorbar_layout_and_png(tmp_path):
    M = _matrix(3, 4, seed=4)
    kw = dict(title="teacher CKA", row_labels=["a", "bb", "ccc"], col_labels=["w", "x", "y", "z"],
              colorbar=True)
    lay = heatmap_layout(M.shape, 12, kw["title"], kw["row_labels"], kw["col_labels"], True)
    img = heatmap_image(M, [[0], [1, 2]], [[0, 1], [2, 3]], cell=12, **kw)
    assert img.shape == (lay["height"], lay["width"], 3)
    assert lay["top"] > 0 and lay["left"] > 0 and lay["width"] > lay["left"] + 48
    assert _outline_pixels(img, 1, 2, 2, 3, 12, 2, top=lay["top"], left=lay["left"])
    assert (img[lay["top"] + 6, lay["left"] + 6] == colormap(M)[0, 0]).all()
    path = tmp_path / "sub" / "cka.png"
    assert save_heatmap_png(str(path), M, [[0], [1, 2]], [[0, 1], [2, 3]], cell=12, **kw) == str(path)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert back.shape == img.shape
    assert (back == img).all()
