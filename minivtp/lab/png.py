"""Pictures without a plotting library: an RGB canvas as a uint8 tensor, and a PNG writer (zlib + struct)."""

import struct
import zlib

import torch

# a few colours, RGB
BLACK, WHITE, GREY, DARK = (0, 0, 0), (255, 255, 255), (128, 128, 128), (40, 40, 40)
GREEN = (60, 230, 90)
PALETTE = {"red": (230, 50, 50), "green": (50, 190, 70), "blue": (60, 110, 240), "yellow": (240, 210, 40)}


def write_png(path, image: torch.Tensor):
    """image (H, W, 3) uint8 -> an 8-bit RGB PNG file."""
    with open(path, "wb") as f:
        f.write(encode_png(image))


def encode_png(image: torch.Tensor) -> bytes:
    """image (H, W, 3) uint8 -> the bytes of an 8-bit RGB PNG."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(image.shape)} {image.dtype}")
    H, W, _ = image.shape
    rows = torch.cat([torch.zeros(H, 1, dtype=torch.uint8), image.reshape(H, W * 3)], dim=1)  # filter byte 0 per row
    try:
        raw = rows.contiguous().numpy().tobytes()
    except (ImportError, RuntimeError):  # numpy is not a dependency of minivtp; without it, the slow way
        raw = bytes(rows.flatten().tolist())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def read_png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    return struct.unpack(">II", head[16:24])  # (W, H)


def canvas(H, W, colour=WHITE):
    return torch.tensor(colour, dtype=torch.uint8).expand(H, W, 3).clone()


def fill(img, y, x, h, w, colour):
    img[y : y + h, x : x + w] = torch.tensor(colour, dtype=torch.uint8)


def outline(img, y, x, h, w, colour, width=2):
    fill(img, y, x, width, w, colour)
    fill(img, y + h - width, x, width, w, colour)
    fill(img, y, x, h, width, colour)
    fill(img, y, x + w - width, h, width, colour)


def heat(v: float):
    """0..1 -> black, red, orange, yellow, white: a colour map that prints and reads in grey."""
    stops = [(0, 0, 0), (150, 20, 30), (230, 90, 20), (250, 210, 60), (255, 255, 255)]
    v = min(max(v, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(v), len(stops) - 2)
    t = v - i
    return tuple(round(a + (b - a) * t) for a, b in zip(stops[i], stops[i + 1]))


def draw_shape(img, y, x, size, shape, colour):
    """A filled circle, square, triangle or star (a plus sign) in a size x size cell."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    u, v = (xx - c) / c, (yy - c) / c  # -1..1
    if shape == "circle":
        mask = u**2 + v**2 <= 0.7**2
    elif shape == "square":
        mask = (u.abs() <= 0.6) & (v.abs() <= 0.6)
    elif shape == "triangle":
        mask = (v <= 0.65) & (v >= -0.7) & (u.abs() <= (v + 0.7) / 1.35 * 0.75)
    else:  # star, drawn as a thick plus
        mask = ((u.abs() <= 0.22) & (v.abs() <= 0.8)) | ((v.abs() <= 0.22) & (u.abs() <= 0.8))
    region = img[y : y + size, x : x + size]
    region[mask] = torch.tensor(colour, dtype=torch.uint8)
