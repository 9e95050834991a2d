"""Image folders, image loading with clear conversions, random training crops, padding to a multiple.

Training images are decoded once and kept in memory as uint8: decoding a 1.5 MP PNG costs more
than a training step of the small models, so reading files per step would starve the CPU.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .atomic import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs before decoding them


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


def repo_data_dir() -> Path:
    """The shared data folder: $DQSEARCH_DATA, else ../shared/data next to the checkout."""
    env = os.environ.get("DQSEARCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def default_train_dir() -> Path:
    """../shared/data/train (or $DQSEARCH_DATA/train); the bundled sample images where that folder
    does not exist (a fresh clone), with a warning naming --data."""
    train = repo_data_dir() / "train"
    if train.is_dir():
        return train
    warnings.warn(f"no training images at {train}; using the {len(list_images(sample_images_dir()))} "
                  "bundled sample images (pass --data DIR for real training)", stacklevel=2)
    return sample_images_dir()


def sample_images_dir() -> Path:
    """Small photos bundled with the package (see sample_images/ATTRIBUTION.md)."""
    return Path(str(resources.files("dqsearch") / "sample_images"))


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted; an error naming the folder when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def load_image(path: str | Path, warn: bool = True) -> Tensor:
    """RGB float tensor [3, H, W] in [0, 1]. Grayscale, palette, RGBA, CMYK and 16-bit images are
    converted (with a warning); EXIF orientation is applied; unreadable files raise ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    if path.stat().st_size == 0:
        raise ImageError(f"image {path} is an empty file")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"image {path} is {im.width}x{im.height}: larger than the "
                                 f"{MAX_PIXELS // 2**20} MP this tool accepts")
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb_array(im, path, warn)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        limit = MAX_PIXELS // 2**20
        raise ImageError(f"image {path} is larger than the {limit} MP this tool accepts") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path} is not a readable image ({e})") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image {path} has no pixels")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _to_rgb_array(im: Image.Image, path: Path, warn: bool) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        out = np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2)
        note = "16-bit grayscale, scaled to [0,1] and replicated to RGB"
    elif mode == "RGB":
        return np.asarray(im, dtype=np.float32) / 255.0
    else:
        rgb = im.convert("RGBA").convert("RGB") if mode in ("P", "PA", "LA") else im.convert("RGB")
        out = np.asarray(rgb, dtype=np.float32) / 255.0
        note = f"mode {mode} converted to RGB" + (" (alpha dropped)" if "A" in mode else "")
    if warn:
        warnings.warn(f"{path}: {note}", stacklevel=3)
    return out


def save_image(x: Tensor, path: str | Path, png_level: int = 6) -> None:
    """Save a [3, H, W] or [1, 3, H, W] tensor in [0, 1] as 8-bit RGB. `png_level` is zlib's
    effort (lossless either way): 1 writes a Kodak PNG in 25 ms instead of 85 ms, 6% larger."""
    if x.dim() == 4:
        x = x[0]
    arr = (x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    image = Image.fromarray(arr, "RGB")
    opts = {"compress_level": png_level} if fmt == "PNG" else {}
    atomic_write(path, lambda f: image.save(f, format=fmt, **opts))  # a killed save leaves no half image


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Replicate-pad [B, C, H, W] so H and W divide `multiple`; returns the padding (l, r, t, b)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pad
    return F.pad(x, pad, mode="replicate" if min(h, w) > 1 else "constant"), pad


def crop_padding(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def split_files(files: Sequence[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Deterministic train/validation split of an image list (Kodak stays for the final report)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {val_fraction}")
    files = sorted(files)
    rng = random.Random(seed)
    order = list(range(len(files)))
    rng.shuffle(order)
    n_val = max(1, round(len(files) * val_fraction))
    val = sorted(files[i] for i in order[:n_val])
    train = sorted(files[i] for i in order[n_val:])
    return train, val


class CropSampler:
    """Random crops (with flips) from images held in memory as uint8."""

    def __init__(self, files: Sequence[Path], crop: int):
        if crop < 16:
            raise ValueError(f"crop size must be at least 16, got {crop}")
        self.crop = crop
        self.images = []
        for f in files:
            img = (load_image(f, warn=False) * 255).round().to(torch.uint8)
            if min(img.shape[-2:]) < crop:
                raise ImageError(f"{f} is {img.shape[2]}x{img.shape[1]}, smaller than the {crop} px crop")
            self.images.append(img)
        if not self.images:
            raise ImageError("no training images")

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        out = torch.empty(batch, 3, self.crop, self.crop, dtype=torch.uint8)
        for i in range(batch):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
            _, h, w = img.shape
            y = int(torch.randint(h - self.crop + 1, (1,), generator=generator))
            x = int(torch.randint(w - self.crop + 1, (1,), generator=generator))
            patch = img[:, y : y + self.crop, x : x + self.crop]
            if torch.rand(1, generator=generator) < 0.5:
                patch = patch.flip(-1)
            if torch.rand(1, generator=generator) < 0.5:
                patch = patch.flip(-2)
            out[i] = patch
        return out.float().div_(255.0)
