"""Generate stylefold's built-in style images.

The project ships only images it makes itself: every texture here is drawn from fixed
seeds with numpy and Pillow, so the PNGs are reproducible and free of third-party rights.

    python presets/styles/make_styles.py [OUTPUT_DIR]

Each image is 512x512 and busy in colour and texture at several scales, which is what a
Gram-matrix style loss (Gatys et al.) has to work with.
"""

from __future__ import annotations

import colorsys
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

__all__ = ["STYLES", "brushstrokes", "ink_wash", "main", "mosaic", "pointillism"]

logger = logging.getLogger(__name__)

SIZE = 512
MAX_BYTES = 600 * 1024  # each image ships in the wheel
# Textures with hard edges are drawn this many times larger and reduced: Pillow's
# shapes are not antialiased.
SUPERSAMPLE = 2

Colour = tuple[int, int, int]
Array = np.ndarray


# --- shared helpers -----------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Value noise in [0, 1): a cells x cells random grid, bicubically enlarged."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def fractal_noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 4) -> Array:
    """Octaves of value noise, each twice as fine and half as strong, normalised to [0, 1]."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        total += smooth_noise(rng, size, cells * 2**octave) * 0.5**octave
    return (total - total.min()) / (total.max() - total.min())


def blur(values: Array, sigma: float) -> Array:
    """Gaussian blur of a float image (Pillow's blur has no float mode), via the FFT.

    Edges are mirrored first so that nothing wraps round from the opposite side.
    """
    pad = int(3 * sigma) + 1
    # Round the padded size up to a multiple of 256: the FFT is slow on awkward sizes.
    extra = [(-(n + 2 * pad)) % 256 for n in values.shape]
    padded = np.pad(values, [(pad, pad + extra[0]), (pad, pad + extra[1])], mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    kernel = np.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    smooth = np.fft.irfft2(np.fft.rfft2(padded) * kernel, s=padded.shape)
    return smooth[pad : pad + values.shape[0], pad : pad + values.shape[1]].astype(np.float32)


def jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return r, g, b


def to_image(rgb: Array) -> Image.Image:
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def bezier(p0: Array, p1: Array, p2: Array, samples: int) -> Array:
    """Points on the quadratic Bezier curve p0 -> p2 pulled towards p1."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def normals(path: Array) -> Array:
    """Unit normals along a polyline."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


# --- 1. brushstrokes: an impasto painting ---------------------------------------------

OCHRES: list[Colour] = [(204, 142, 53), (222, 170, 84), (190, 120, 40), (236, 196, 120)]
EARTHS: list[Colour] = [(115, 74, 38), (138, 80, 42), (160, 82, 45), (92, 60, 36), (70, 46, 30)]
CREAMS: list[Colour] = [(242, 226, 186), (250, 238, 205)]
COBALTS: list[Colour] = [(0, 71, 171), (40, 90, 180), (22, 56, 140), (70, 120, 200)]


def brushstrokes(seed: int = 11) -> Image.Image:
    """Short curved bristly strokes, ochre and umber with cobalt accents, in relief."""
    rng = np.random.default_rng(seed)
    size = SIZE * SUPERSAMPLE
    # A toned ground (warm mid brown), mottled as a wiped-on imprimatura would be.
    mottle = fractal_noise(rng, size, 4)[..., None]
    ground = np.array([150, 102, 60]) * (0.8 + 0.4 * mottle)
    canvas = to_image(ground).convert("RGBA")

    flow = fractal_noise(rng, size, 3, octaves=2) * 2 * math.pi  # strokes follow a flow field
    accents = fractal_noise(rng, size, 3, octaves=2)  # where cobalt gathers
    for batch in range(36):
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        late = batch / 36  # later layers: smaller strokes and more light colour, as a painter works
        for _ in range(110):
            x, y = rng.uniform(-20, size + 20, 2)
            xi, yi = int(np.clip(x, 0, size - 1)), int(np.clip(y, 0, size - 1))
            if accents[yi, xi] > 0.7 and rng.random() < 0.5:
                palette = COBALTS
            else:
                odds = [0.5, 0.38 - 0.2 * late, 0.12 + 0.2 * late]
                palette = [OCHRES, EARTHS, CREAMS][rng.choice(3, p=odds)]
            colour = palette[rng.integers(len(palette))]
            angle = flow[yi, xi] + rng.normal(0, 0.35)
            length = rng.uniform(40, 120) * (1.1 - 0.5 * late)
            width = rng.uniform(12, 30) * (1.1 - 0.5 * late)
            direction = np.array([math.cos(angle), math.sin(angle)])
            p0 = np.array([x, y]) - direction * length / 2
            p2 = np.array([x, y]) + direction * length / 2
            normal = np.array([-direction[1], direction[0]])
            p1 = (p0 + p2) / 2 + normal * rng.normal(0, 0.25) * length
            path = bezier(p0, p1, p2, 14)
            _bristle_stroke(draw, rng, path, colour, width, alpha=int(rng.integers(150, 235)))
        canvas.alpha_composite(layer)

    reduced = canvas.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    painting = np.asarray(reduced, np.float32)
    # Impasto relief: treat fine luminance detail as paint height and light it from the top left.
    height = painting.mean(axis=2)
    height = blur(height - blur(height, 6), 0.8)
    relief = (np.roll(height, 1, axis=0) - height) + (np.roll(height, 1, axis=1) - height)
    painting *= (1 + 0.03 * relief)[..., None]
    return to_image(painting)


def _bristle_stroke(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    path: Array,
    colour: Colour,
    width: float,
    alpha: int,
) -> None:
    """A stroke as parallel bristle tracks, each a slightly different colour and length."""
    bristles = max(3, int(width / 3))
    side = normals(path)
    for offset in np.linspace(-0.5, 0.5, bristles):
        start = int(rng.integers(0, 3))
        stop = len(path) - int(rng.integers(0, 4))
        track = path[start:stop] + side[start:stop] * offset * width
        fill = jitter(rng, colour, 14) + (int(np.clip(alpha + rng.integers(-40, 20), 60, 255)),)
        points = [tuple(p) for p in track]
        draw.line(points, fill=fill, width=max(2, int(width / bristles * 1.6)), joint="curve")


# --- 2. mosaic: stained glass ----------------------------------------------------------

JEWELS: list[Colour] = [
    (155, 17, 30),  # ruby
    (200, 30, 60),  # garnet
    (15, 82, 186),  # sapphire
    (30, 50, 150),  # lapis
    (0, 140, 100),  # emerald
    (40, 170, 150),  # turquoise
    (120, 60, 170),  # amethyst
    (230, 160, 20),  # topaz
    (245, 200, 60),  # citrine
    (220, 100, 20),  # amber
]


def mosaic(seed: int = 23) -> Image.Image:
    """Stained glass: jewel-coloured Voronoi panes, each shaded, in dark leading."""
    rng = np.random.default_rng(seed)
    cells = 13
    pitch = SIZE / cells
    gy, gx = np.mgrid[0:cells, 0:cells]
    seeds = np.stack([gx, gy], axis=-1).reshape(-1, 2) + rng.uniform(0.1, 0.9, (cells * cells, 2))
    seeds *= pitch
    colours = np.array([JEWELS[i] for i in rng.integers(len(JEWELS), size=len(seeds))], np.float32)
    colours *= rng.uniform(0.8, 1.12, (len(seeds), 1))
    slopes = rng.normal(0, 1, (len(seeds), 2))  # per-cell shading direction

    # Warped coordinates make the leading slightly hand-cut rather than ruler-straight.
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    xs += (fractal_noise(rng, SIZE, 6, 3) - 0.5) * 10
    ys += (fractal_noise(rng, SIZE, 6, 3) - 0.5) * 10
    points = np.stack([xs, ys], axis=-1).reshape(-1, 2)

    nearest = np.empty(len(points), np.int64)
    boundary = np.empty(len(points), np.float32)
    for chunk in range(0, len(points), 16384):
        block = points[chunk : chunk + 16384]
        dist2 = ((block[:, None, :] - seeds[None, :, :]) ** 2).sum(axis=-1)
        two = np.argpartition(dist2, 1, axis=1)[:, :2]
        d2 = np.take_along_axis(dist2, two, axis=1)
        order = np.argsort(d2, axis=1)
        first = np.take_along_axis(two, order[:, :1], axis=1)[:, 0]
        second = np.take_along_axis(two, order[:, 1:], axis=1)[:, 0]
        gap = np.linalg.norm(seeds[first] - seeds[second], axis=1)
        # Distance to the bisector between the two nearest seeds: exact Voronoi edge distance.
        boundary[chunk : chunk + 16384] = (d2.max(axis=1) - d2.min(axis=1)) / (2 * gap)
        nearest[chunk : chunk + 16384] = first
    nearest = nearest.reshape(SIZE, SIZE)
    boundary = boundary.reshape(SIZE, SIZE)

    rel = (np.stack([xs, ys], axis=-1) - seeds[nearest]) / pitch
    shade = 1 + 0.28 * (rel * slopes[nearest]).sum(axis=-1)  # light falls across each pane
    shade *= 1 - 0.4 * np.exp(-boundary / 5)  # panes darken towards the lead
    streaks = fractal_noise(rng, SIZE, 24, 3) - 0.5
    glass = 1 + 0.08 * streaks + 0.05 * (rng.random((SIZE, SIZE)) - 0.5)
    rgb = colours[nearest] * (shade * glass)[..., None]

    lead_half_width = 2.4
    lead = np.clip((lead_half_width + 0.8 - boundary) / 1.6, 0, 1)[..., None]  # antialiased edge
    bead = 28 + 38 * np.exp(-(boundary**2) / 1.2)  # a rounded solder line, lit along its crest
    lead_rgb = np.stack([bead, bead * 0.95, bead * 0.88], axis=-1)
    return to_image(rgb * (1 - lead) + lead_rgb * lead)


# --- 3. ink wash: sumi-e ----------------------------------------------------------------


def ink_wash(seed: int = 37) -> Image.Image:
    """Sumi-e: misty mountain washes, bamboo, blots and spatter on grained warm paper."""
    rng = np.random.default_rng(seed)
    size = SIZE * SUPERSAMPLE
    density = np.zeros((size, size), np.float32)

    def layer_on(ink: Array) -> None:  # transparent ink over ink: the densities multiply out
        nonlocal density
        density = 1 - (1 - density) * (1 - np.clip(ink, 0, 1))

    # Misty mountains, back to front: each wash darkest at its ridge, where the wet brush
    # was laid, with the rim drying ink leaves, and fading downwards into mist.
    rows = np.arange(size, dtype=np.float32)[:, None]
    for depth in range(4):
        peaks = fractal_noise(rng, size, 3 + depth, 3)[size // 2] ** 1.6
        ridge = size * (0.3 + 0.16 * depth) - size * (0.32 - 0.04 * depth) * peaks
        below = rows - ridge[None, :]
        mist = size * rng.uniform(0.06, 0.12)
        fade = np.where(below > 0, np.exp(-np.maximum(below, 0) / mist), 0)
        granulation = 0.7 + 0.6 * fractal_noise(rng, size, 20, 3)
        rim = np.exp(-((below - 3) ** 2) / 18)
        tone = (0.16, 0.26, 0.38, 0.55)[depth]
        layer_on(blur(tone * (fade * granulation + 0.5 * rim), 7 - 1.5 * depth))

    # Bamboo: stalks in segments with knotted nodes, leaves in clusters, dry at the tips.
    for stalk_x, tone, width in ((0.8, 0.85, 30), (0.62, 0.4, 22)):
        nodes = np.cumsum(rng.uniform(110, 170, 12)) - rng.uniform(180, 260)  # from below the edge
        lean = rng.normal(0, 0.06)
        for top, bottom in zip(nodes[1:], nodes[:-1]):
            if bottom > size:
                break
            x0 = size * stalk_x + lean * (size - bottom)
            x1 = size * stalk_x + lean * (size - top)
            start, end = (x0, size - bottom - 4), (x1, size - top + 4)
            layer_on(_stalk_segment(size, start, end, width, tone))
            if rng.random() < 0.6:  # a twig from the node, with a hanging cluster of leaves
                side = 1 if rng.random() < 0.5 else -1
                node = np.array([x1, size - top])
                twig_end = node + [side * rng.uniform(40, 120), -rng.uniform(10, 70)]
                twig = Image.new("F", (size, size), 0.0)
                ImageDraw.Draw(twig).line([tuple(node), tuple(twig_end)], fill=tone, width=4)
                layer_on(np.asarray(twig))
                for _leaf in range(int(rng.integers(3, 6))):
                    angle = math.pi / 2 - side * rng.uniform(-0.3, 1.4)  # down and outwards
                    layer_on(_leaf_stroke(rng, size, twig_end, angle, min(1.0, tone + 0.1)))

    # Blots and spatter from a loaded brush.
    for _ in range(14):
        blot = Image.new("F", (size, size), 0.0)
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(6, 34)
        ImageDraw.Draw(blot).ellipse([cx - r, cy - r * 0.85, cx + r, cy + r * 0.85], fill=1.0)
        layer_on(rng.uniform(0.3, 0.7) * blur(np.asarray(blot), r * rng.uniform(0.1, 0.4)))
    spatter = Image.new("L", (size, size), 0)
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    for x, y in centre + rng.normal(0, 90, (60, 2)):
        r = rng.uniform(1.5, 5)
        tone = int(rng.integers(160, 250))
        ImageDraw.Draw(spatter).ellipse([x - r, y - r, x + r, y + r], fill=tone)
    layer_on(np.asarray(spatter, np.float32) / 255)

    density = blur(density, 0.8)
    reduced = Image.fromarray(density, "F").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    density = np.asarray(reduced)
    # Warm paper with fibres and grain; thin ink takes up the grain.
    grain = blur(rng.normal(0, 1, (SIZE, SIZE)), 0.7)
    fibres = grain + 0.5 * (fractal_noise(rng, SIZE, 48, 2) - 0.5)
    mottle = fractal_noise(rng, SIZE, 3) - 0.5
    paper = np.array([238, 228, 206], np.float32) * (1 + 0.025 * fibres + 0.04 * mottle)[..., None]
    ink = np.array([24, 24, 30], np.float32)
    grainy = np.clip(density * (1 + 0.12 * fibres), 0, 1)[..., None]
    return to_image(paper * (1 - grainy) + ink * grainy)


def _stalk_segment(
    size: int, start: tuple[float, float], end: tuple[float, float], width: float, tone: float
) -> Array:
    """One bamboo segment: a single press-and-drag, darker at the edges than in the middle."""
    layer = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(layer)
    draw.line([start, end], fill=tone, width=int(width))
    draw.line([start, end], fill=tone * 0.7, width=int(width * 0.45))
    for x, y in (start, end):  # the flared knot at each node
        draw.ellipse([x - width * 0.62, y - 3, x + width * 0.62, y + 3], fill=min(1.0, tone * 1.15))
    return np.asarray(layer)  # softened with everything else at the end


def _leaf_stroke(rng: np.random.Generator, size: int, base: Array, angle: float, tone: float) -> Array:
    """A bamboo leaf: one stroke, pressed at the base and lifted to a point, dry near the tip."""
    length = rng.uniform(90, 190)
    direction = np.array([math.cos(angle), math.sin(angle)])
    tip = base + direction * length
    bend = (base + tip) / 2 + np.array([-direction[1], direction[0]]) * rng.normal(0, 0.15) * length
    path = bezier(base, bend, tip, 32)
    t = np.linspace(0, 1, len(path))[:, None]
    half = rng.uniform(8, 15) * np.sin(math.pi * np.clip(t**0.6 * 1.02, 0, 1)) ** 0.8 + 0.5
    side = normals(path)
    outline = np.concatenate([path + side * half, (path - side * half)[::-1]])
    layer = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(layer)
    draw.polygon([tuple(p) for p in outline], fill=tone * rng.uniform(0.8, 1.0))
    dry_from = int(len(path) * rng.uniform(0.45, 0.7))
    for offset in rng.uniform(-0.6, 0.6, int(rng.integers(1, 4))):  # streaks the dry brush missed
        streak = path[dry_from:] + side[dry_from:] * half[dry_from:] * offset
        draw.line([tuple(p) for p in streak], fill=0.0, width=2)
    return np.asarray(layer)


# --- 4. pointillism: Seurat's dots -------------------------------------------------------


def pointillism(seed: int = 41) -> Image.Image:
    """Seurat's dots: dabs of pure hue and their complementaries, large to small."""
    rng = np.random.default_rng(seed)
    size = SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (size, size), (242, 236, 220))
    draw = ImageDraw.Draw(canvas)
    hue, value = _pointillist_scene(rng, size)
    passes = ((2500, 10.0, 15.0), (3500, 7.0, 10.0), (2500, 5.0, 7.0))  # large dabs first
    for count, r_lo, r_hi in passes:
        xs, ys = rng.uniform(0, size, count), rng.uniform(0, size, count)
        for x, y, r in zip(xs, ys, rng.uniform(r_lo, r_hi, count)):
            base_hue, base_value = hue[int(y), int(x)], value[int(y), int(x)]
            roll = rng.random()
            if roll < 0.2:  # the complementary, which makes its neighbours vibrate
                h, s, v = (base_hue + 0.5) % 1, rng.uniform(0.55, 0.9), rng.uniform(0.7, 0.95)
            elif roll < 0.3:  # near-white dots lift the tone
                h, s, v = base_hue, rng.uniform(0.05, 0.2), rng.uniform(0.92, 1.0)
            else:
                h = (base_hue + rng.normal(0, 0.03)) % 1
                s = rng.uniform(0.55, 0.95)
                v = float(np.clip(base_value + rng.normal(0, 0.07), 0.3, 1.0))
            colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))
            aspect = rng.uniform(0.8, 1.25)
            rx, ry = r * aspect, r / aspect
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _pointillist_scene(rng: np.random.Generator, size: int) -> tuple[Array, Array]:
    """Hue and value of the picture under the dots: sky, sun, a far bank of trees, grass."""
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    warp = (fractal_noise(rng, size, 4, 3) - 0.5) * 0.12
    y = rows + warp
    glow = np.exp(-(((np.linspace(-1, 1, size)[None, :] - 0.4) ** 2) * 3 + (y - 0.4) ** 2 * 20))
    sky_hue = np.where(glow > 0.45, 0.12, 0.6 - 0.06 * fractal_noise(rng, size, 5, 2))  # a sun
    trees = (y > 0.42) & (y < 0.58 + 0.08 * fractal_noise(rng, size, 6, 2))
    patches = fractal_noise(rng, size, 5, 3) > 0.6  # sunlit grass turns orange
    hue = np.where(y < 0.45, sky_hue, np.where(trees, 0.42, np.where(patches, 0.09, 0.27)))
    shimmer = 0.1 * (fractal_noise(rng, size, 8, 2) - 0.5)
    value = np.where(y < 0.45, 0.95, np.where(trees, 0.5, 0.8)) + shimmer
    return hue.astype(np.float32), value.astype(np.float32)


STYLES: dict[str, Callable[[], Image.Image]] = {
    "brushstrokes": brushstrokes,
    "mosaic": mosaic,
    "ink_wash": ink_wash,
    "pointillism": pointillism,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, make in STYLES.items():
        started = time.perf_counter()
        image = make()
        path = out_dir / f"{name}.png"
        image.save(path, optimize=True)
        if path.stat().st_size > MAX_BYTES:  # the lowest bit of each channel can't be seen
            ImageOps.posterize(image, 7).save(path, optimize=True)
        seconds = time.perf_counter() - started
        logger.info("%s: %d KB in %.1f s", path, path.stat().st_size // 1024, seconds)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
