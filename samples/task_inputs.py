"""Real inputs and task metrics for the detector and the text recogniser.

- :func:`detection_set`: photographs shipped with scikit-image, letterboxed for the
  YOLOv8n detector from the nudenet wheel;
- :func:`ocr_rec_set`: text lines rendered with Pillow (words and numbers), prepared
  as rapidocr prepares them for PP-OCRv4 rec, with the text they show;
- :func:`ctc_decode` and :func:`rec_characters`: greedy CTC decoding with the model's
  own dictionary (stored in its metadata), as rapidocr does.
"""

from __future__ import annotations

import numpy as np
import onnx
from PIL import Image, ImageDraw

from samples import real_inputs, real_models

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "camera",
    "cat",
    "immunohistochemistry",
    "hubble_deep_field",
    "page",
    "text",
    "moon",
    "horse",
    "retina",
    "skin",
    "motorcycle",
)


def _photos() -> list[np.ndarray]:
    from skimage import data

    images = []
    for name in PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception:  # some skimage images need a download: skip those
            continue
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (np.clip(img.astype(np.float64) / max(img.max(), 1), 0, 1) * 255).astype(np.uint8)
        images.append(img)
    return images


def detection_set(n: int = 8) -> np.ndarray:
    """``n`` photographs (cycling through those available) as float32 ``[n, 3, 320, 320]``.

    Beyond the first pass the photographs are mirrored, so no two inputs are equal.
    """
    photos = _photos()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            img = img[:, ::-1]
        out.append(real_inputs.preprocess_yolo(np.ascontiguousarray(img)))
    return np.stack(out).astype(np.float32)


def ocr_rec_set(n: int = 16, seed: int = 0, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered text lines as float32 ``[n, 3, 48, width]`` and their strings."""
    rng = np.random.default_rng(seed)
    words = (
        "invoice",
        "total",
        "amount",
        "order",
        "date",
        "number",
        "paid",
        "balance",
        "account",
        "office",
        "street",
        "London",
        "Paris",
        "report",
        "page",
        "model",
    )
    images, texts = [], []
    for _ in range(n):
        parts = [str(rng.choice(words)) for _ in range(int(rng.integers(1, 3)))]
        parts.append(str(int(rng.integers(10, 99999))))
        text = " ".join(parts)
        size = int(rng.integers(28, 40))
        font = real_inputs._font(None, size)
        w = int(font.getlength(text)) + 24
        img = Image.new("L", (w, size + 20), color=int(rng.integers(225, 256)))
        ImageDraw.Draw(img).text((12, 8), text, fill=int(rng.integers(0, 40)), font=font)
        images.append(real_inputs.preprocess_ocr_line(np.asarray(img), width))
        texts.append(text)
    return np.stack(images).astype(np.float32), texts


def rec_characters() -> list[str]:
    """PP-OCRv4 rec's output classes: blank, the dictionary in its metadata, then space."""
    model = onnx.load(real_models.fetch("ppocr_v4_rec"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ["<blank>", *meta["character"].splitlines(), " "]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> list[str]:
    """Greedy CTC: best class per step, repeats merged, blanks (class 0) dropped."""
    best = probs.argmax(axis=2)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return [
        "".join(characters[i] for i in row[mask] if i < len(characters))
        for row, mask in zip(best, keep, strict=True)
    ]
