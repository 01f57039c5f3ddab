"""Small heatmaps of 2-D derivatives (gradients, Jacobians, Hessians) as PNG bytes.

A result has to render in milliseconds, and importing matplotlib or drawing a figure
takes far longer, so the picture is made here with numpy, zlib and struct: block means
down to at most 64x64 pixels, a diverging colour map centred on 0, and a minimal PNG.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

MAX_SIDE = 64  # pixels per side, at most

# ColorBrewer RdBu reversed (matplotlib's "RdBu_r"): blue below 0, white at 0, red above.
_ANCHORS = np.array(
    [
        (0x05, 0x30, 0x61),
        (0x21, 0x66, 0xAC),
        (0x43, 0x93, 0xC3),
        (0x92, 0xC5, 0xDE),
        (0xD1, 0xE5, 0xF0),
        (0xF7, 0xF7, 0xF7),
        (0xFD, 0xDB, 0xC7),
        (0xF4, 0xA5, 0x82),
        (0xD6, 0x60, 0x4D),
        (0xB2, 0x18, 0x2B),
        (0x67, 0x00, 0x1F),
    ],
    dtype=np.float64,
)
_STEPS = np.linspace(0.0, 1.0, 256)
_LUT = (
    np.stack(
        [np.interp(_STEPS, np.linspace(0.0, 1.0, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)
_NAN_GREY = np.array([0x99, 0x99, 0x99], dtype=np.uint8)


def downsample(a: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Block means rather than strides: every element counts, so a lone spike tints its block.

    A block holding a NaN (or both +Inf and -Inf) becomes NaN, so it shows grey.
    """
    a = np.asarray(a, dtype=np.float64)
    for axis in (0, 1):
        n = a.shape[axis]
        if n > max_side:
            edges = np.linspace(0, n, max_side + 1).astype(np.intp)
            sums = np.add.reduceat(a, edges[:-1], axis=axis)
            counts = np.diff(edges).astype(np.float64)
            a = sums / (counts[:, None] if axis == 0 else counts[None, :])
    return a


def colorize(a: np.ndarray) -> tuple[np.ndarray, float]:
    """RGB pixels and the scale: symmetric around 0, so the sign reads off the hue."""
    finite = np.isfinite(a)
    vmax = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    t = np.clip(a / (vmax if vmax > 0 else 1.0), -1.0, 1.0)  # +-Inf clip to the ends
    index = np.rint((np.nan_to_num(t) + 1.0) * 127.5).astype(np.uint8)
    rgb = _LUT[index]
    rgb[np.isnan(a)] = _NAN_GREY
    return rgb, vmax


def encode_png(pixels: np.ndarray, level: int = 6) -> bytes:
    """The smallest valid PNG for 8-bit RGB or RGBA pixels: no filters, one IDAT chunk."""
    h, w, channels = pixels.shape
    raw = np.zeros((h, 1 + channels * w), dtype=np.uint8)  # column 0: filter type 0 (none)
    raw[:, 1:] = np.asarray(pixels, dtype=np.uint8).reshape(h, channels * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    color_type = {3: 2, 4: 6}[channels]  # PNG's colour types: 2 is RGB, 6 RGBA
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)  # 8 bits, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def heatmap_png(a: np.ndarray, max_side: int = MAX_SIDE) -> tuple[bytes, tuple[int, int], float]:
    """PNG bytes, the pixel size (rows, columns) and the colour scale for a 2-D array."""
    if np.iscomplexobj(a):
        a = np.abs(a)
    small = downsample(a, max_side)
    rgb, vmax = colorize(small)
    return encode_png(rgb), (small.shape[0], small.shape[1]), vmax
