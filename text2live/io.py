"""Reading input images robustly and writing the edit layers as PNG files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from text2live.errors import InputError
from text2live.files import atomic_path
from text2live.views import resized_shape

OUTPUT_NAMES = ("edit", "alpha", "edit_on_greenscreen", "composite")
INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
HIGH_DEPTH_MODES = (*INTEGER_MODES, "F")
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height

log = logging.getLogger("text2live")


def _to_float_array(img: Image.Image) -> np.ndarray:
    """H x W x 3 float32 in [0, 1] from any PIL mode (16-bit, palette, alpha, CMYK ...)."""
    if img.mode in INTEGER_MODES:
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / scale, 0, 1)
        return np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(arr if arr.max() <= 1.0 else arr / 255.0, 0, 1)
        return np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels carry undefined colour: composite over white.
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _image_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"image_path={path} is a folder: pass the path of an image file (a PNG or JPEG)")
    if not path.is_file():
        raise InputError(f"image_path={path} does not exist: pass the path of an image file")
    return path


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as :func:`load_image` sees it (EXIF orientation applied), pixels not decoded.

    Raises the same errors as :func:`load_image` for a missing or unreadable file.
    """
    path = _image_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"cannot read {path} as an image ({exc}): pass a PNG or JPEG file") from None
    return (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)


def load_image(path: str | os.PathLike, resize_shorter: int = -1) -> torch.Tensor:
    """Read an image as a [3, H, W] float tensor in [0, 1].

    EXIF orientation is applied; grayscale, palette, alpha (composited over white) and 16-bit images are
    converted. ``resize_shorter > 0`` resizes (PIL bilinear, as the reference) so the shorter side has that
    many pixels.
    """
    path = _image_file(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"cannot read {path} as an image ({exc}): pass a PNG or JPEG file") from None
    resize = resize_shorter and resize_shorter > 0 and min(img.size) != resize_shorter
    if img.mode in HIGH_DEPTH_MODES:
        # Scale to [0, 1] first: the scale depends on the bit depth, which a resize in PIL would lose.
        image = torch.from_numpy(_to_float_array(img)).permute(2, 0, 1)[None]
        if resize:
            shape = resized_shape(img.height, img.width, resize_shorter)
            image = F.interpolate(image, size=shape, mode="bilinear", align_corners=False, antialias=True)
        return image[0].clamp(0, 1).contiguous()
    if resize:
        height, width = resized_shape(img.height, img.width, resize_shorter)
        img = img.resize((width, height), Image.BILINEAR)
    return torch.from_numpy(_to_float_array(img)).permute(2, 0, 1).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] (C = 1, 3 or 4) in [0, 1] -> H x W (x C) uint8."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    arr = arr.transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a [C, H, W] image in [0, 1] as PNG (atomically: see :mod:`text2live.files`)."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def save_layers(layers: dict[str, torch.Tensor], folder: str | os.PathLike) -> list[Path]:
    """Write edit, alpha, edit_on_greenscreen, composite and the RGBA edit layer (``layer_rgba.png``).

    ``layers`` holds [1, C, H, W] tensors as returned by :func:`text2live.generator.render_layers`.
    """
    folder = Path(folder)
    written = []
    for name in OUTPUT_NAMES:
        if name in layers:
            save_png(layers[name][0], folder / f"{name}.png")
            written.append(folder / f"{name}.png")
    rgba = torch.cat([layers["edit"][0], layers["alpha"][0]])
    save_png(rgba, folder / "layer_rgba.png")
    written.append(folder / "layer_rgba.png")
    return written


# videos -----------------------------------------------------------------------------------------------------

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_frames(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"frames_dir={folder} is not a folder: pass the folder that holds the video's frames (for the examples, "
            "scripts/prepare_video_data.py lays them out under data_dir)"
        )
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())


def load_frames(folder: str | os.PathLike, num_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """The first ``num_frames`` frames of ``folder`` (sorted by name) as [T, 3, H, W] in [0, 1].

    Every frame is resized to ``size`` = (H, W) with Lanczos filtering. Raises if fewer frames are found or
    if they are not all the same size.
    """
    files = list_frames(folder)
    if len(files) < num_frames:
        raise InputError(
            f"{folder} holds {len(files)} frames (jpg/png) but num_frames={num_frames}: pass the right frames_dir "
            "or set num_frames to the frame count the NLA checkpoint was trained on"
        )
    if len(files) > num_frames:
        log.info("%s holds %d frames: using the first %d (num_frames)", folder, len(files), num_frames)
    files = files[:num_frames]
    sizes: dict[tuple[int, int], Path] = {}
    for path in files:
        try:
            with Image.open(path) as img:
                sizes.setdefault(ImageOps.exif_transpose(img).size, path)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"cannot read frame {path} ({exc}): replace or remove it") from None
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise InputError(
                f"the frames of {folder} are not all the same size: {pa.name} is {a[0]}x{a[1]} but {pb.name} is "
                f"{b[0]}x{b[1]}; a video's frames must share one size"
            )
    height, width = size
    video = torch.empty(num_frames, 3, height, width)
    for i, path in enumerate(files):
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            img = img.convert("RGB").resize((width, height), Image.LANCZOS)
        video[i] = torch.from_numpy(_to_float_array(img)).permute(2, 0, 1)
    return video


def save_png_sequence(frames: torch.Tensor, folder: str | os.PathLike) -> list[Path]:
    """Write [T, C, H, W] frames as ``00000.png``, ``00001.png`` ... (RGBA when C = 4)."""
    folder = Path(folder)
    paths = [folder / f"{i:05d}.png" for i in range(len(frames))]
    for frame, path in zip(frames, paths):
        save_png(frame, path)
    return paths


def save_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write [T, C, H, W] frames in [0, 1] (C = 1 or 3) as MP4 (H.264 through imageio-ffmpeg) or GIF.

    The format follows the suffix. The file appears only once complete.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"cannot write a video as {path.suffix!r}: use .mp4 or .gif")
    frames = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
    arrays = [to_uint8(frame) for frame in frames]
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            imageio.mimwrite(tmp, arrays, format="GIF", duration=1000.0 / fps, loop=0)
        else:
            # Even sizes only (yuv420p); other sizes are padded by ffmpeg's macro-block rounding.
            imageio.mimwrite(tmp, arrays, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=2)
    return path
