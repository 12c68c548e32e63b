"""What a picture needs to say what it shows, without a plotting library: a 5 x 7 pixel font (capitals, digits,
the punctuation a title needs; lower case is drawn in capitals, a character it lacks as "?"), a colour scale
(png.heat's black-red-yellow-white, as a tensor), and a frame around a picture with a title above it and the scale
with its ends named below.

    picture.draw(img, y, x, "M=10 ALPHA=0.1", colour=png.BLACK, scale=2)
    img = picture.annotate(img, ["Q: WHAT IS HE DOING?", "M=10 ALPHA=0.1 KEPT 58 OF 576"], "low", "high")
"""

import torch

# each glyph: its 7 rows of 5 columns, top to bottom, "#" is ink
GLYPHS = {
    'A': ".###./#...#/#...#/#####/#...#/#...#/#...#", 'B': "####./#...#/#...#/####./#...#/#...#/####.", 'C': ".###./#...#/#..../#..../#..../#...#/.###.",
    'D': "####./#...#/#...#/#...#/#...#/#...#/####.", 'E': "#####/#..../#..../####./#..../#..../#####", 'F': "#####/#..../#..../####./#..../#..../#....",
    'G': ".###./#...#/#..../#.###/#...#/#...#/.####", 'H': "#...#/#...#/#...#/#####/#...#/#...#/#...#", 'I': ".###./..#../..#../..#../..#../..#../.###.",
    'J': "..###/...#./...#./...#./...#./#..#./.##..", 'K': "#...#/#..#./#.#../##.../#.#../#..#./#...#", 'L': "#..../#..../#..../#..../#..../#..../#####",
    'M': "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#", 'N': "#...#/##..#/#.#.#/#..##/#...#/#...#/#...#", 'O': ".###./#...#/#...#/#...#/#...#/#...#/.###.",
    'P': "####./#...#/#...#/####./#..../#..../#....", 'Q': ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#", 'R': "####./#...#/#...#/####./#.#../#..#./#...#",
    'S': ".####/#..../#..../.###./....#/....#/####.", 'T': "#####/..#../..#../..#../..#../..#../..#..", 'U': "#...#/#...#/#...#/#...#/#...#/#...#/.###.",
    'V': "#...#/#...#/#...#/#...#/#...#/.#.#./..#..", 'W': "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.", 'X': "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    'Y': "#...#/#...#/.#.#./..#../..#../..#../..#..", 'Z': "#####/....#/...#./..#../.#.../#..../#####", '0': ".###./#...#/#..##/#.#.#/##..#/#...#/.###.",
    '1': "..#../.##../..#../..#../..#../..#../.###.", '2': ".###./#...#/....#/...#./..#../.#.../#####", '3': "#####/...#./..#../...#./....#/#...#/.###.",
    '4': "...#./..##./.#.#./#..#./#####/...#./...#.", '5': "#####/#..../####./....#/....#/#...#/.###.", '6': "..##./.#.../#..../####./#...#/#...#/.###.",
    '7': "#####/....#/...#./..#../.#.../.#.../.#...", '8': ".###./#...#/#...#/.###./#...#/#...#/.###.", '9': ".###./#...#/#...#/.####/....#/...#./.##..",
    ' ': "...../...../...../...../...../...../.....", '.': "...../...../...../...../...../.##../.##..", ',': "...../...../...../...../.##../.##../..#..",
    ':': "...../.##../.##../...../..##./..##./.....", ';': "...../.##../.##../...../..##./..##./...#.", '=': "...../...../#####/...../#####/...../.....",
    '-': "...../...../...../#####/...../...../.....", '+': "...../..#../..#../#####/..#../..#../.....", '?': ".###./#...#/....#/...#./...#./...../...#.",
    '!': "..#../..#../..#../..#../..#../...../..#..", '(': "...#./..#../.#.../.#.../.#.../..#../...#.", ')': ".#.../..#../...#./...#./...#./..#../.#...",
    '/': "....#/....#/...#./..#../.#.../#..../#....", "'": "..#../..#../.#.../...../...../...../.....", '"': ".#.#./.#.#./.#.#./...../...../...../.....",
    '%': "##.../##..#/...#./..#../.#.../#..##/...##", '_': "...../...../...../...../...../...../#####", '<': "...#./..#../.#.../#..../.#.../..#../...#.",
    '>': ".#.../..#../...#./....#/...#./..#../.#...", '*': "...../..#../#.#.#/.###./#.#.#/..#../.....", '#': ".#.#./.#.#./#####/.#.#./#####/.#.#./.#.#.",
}
WIDTH, HEIGHT = 5, 7


def glyph(ch: str) -> torch.Tensor:
    """(7, 5) bool: where the character has ink."""
    rows = GLYPHS.get(ch.upper(), GLYPHS["?"]).split("/")
    return torch.tensor([[c == "#" for c in row] for row in rows])


def render(text: str, scale: int = 1) -> torch.Tensor:
    """(7*scale, 6*scale*len(text)) bool: the text's ink, one column of space after each character."""
    if not text:
        return torch.zeros(HEIGHT * scale, 0, dtype=torch.bool)
    cells = [torch.cat([glyph(c), torch.zeros(HEIGHT, 1, dtype=torch.bool)], dim=1) for c in text]
    ink = torch.cat(cells, dim=1)
    return ink.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def width(text: str, scale: int = 1) -> int:
    return (WIDTH + 1) * scale * len(text)


def draw(img: torch.Tensor, y: int, x: int, text: str, colour=(0, 0, 0), scale: int = 1):
    """Ink `text` into img (H, W, 3) uint8 with its top left at (y, x); what falls outside the image is cut."""
    ink = render(text, scale)
    h, w = min(ink.shape[0], img.shape[0] - y), min(ink.shape[1], img.shape[1] - x)
    if h <= 0 or w <= 0:
        return
    region = img[y : y + h, x : x + w]
    region[ink[:h, :w]] = torch.tensor(colour, dtype=torch.uint8)


STOPS = ((0, 0, 0), (150, 20, 30), (230, 90, 20), (250, 210, 60), (255, 255, 255))  # png.heat's


def heat(level: torch.Tensor) -> torch.Tensor:
    """level (...) in 0..1 -> (..., 3) float RGB on png.heat's scale, for a whole tensor at once."""
    stops = torch.tensor(STOPS, dtype=torch.float32)
    v = level.float().clamp(0, 1) * (len(STOPS) - 1)
    i = v.floor().long().clamp(max=len(STOPS) - 2)
    t = (v - i)[..., None]
    return stops[i] + (stops[i + 1] - stops[i]) * t


def annotate(img: torch.Tensor, title: list, low: str, high: str, scale: int = 2, margin: int = 8) -> torch.Tensor:
    """img (H, W, 3) uint8 with the lines of `title` above it and, below it, the colour scale from 0 (left,
    named `low`) to 1 (right, named `high`)."""
    from minivtp.lab import png
    line = (HEIGHT + 3) * scale
    bar_h = 14
    H, W = img.shape[:2]
    width_needed = max([width(t, scale) for t in title] + [W, width(low, scale) + width(high, scale) + 40]) + 2 * margin
    top = margin + line * len(title)
    out = png.canvas(top + H + margin + bar_h + 4 + line + margin, width_needed, png.WHITE)
    for k, t in enumerate(title):
        draw(out, margin + k * line, margin, t, png.BLACK, scale)
    out[top : top + H, margin : margin + W] = img
    y = top + H + margin
    bar = heat(torch.linspace(0, 1, width_needed - 2 * margin))  # (w, 3)
    out[y : y + bar_h, margin : width_needed - margin] = bar.round().to(torch.uint8)[None].expand(bar_h, -1, -1)
    draw(out, y + bar_h + 4, margin, low, png.BLACK, scale)
    draw(out, y + bar_h + 4, width_needed - margin - width(high, scale), high, png.BLACK, scale)
    return out
