"""The inputs of a Neural Layered Atlas: a video's frames, its foreground masks and its optical flow.

They are prepared as NLA's own preprocessing prepares them (Kasten et al. 2021, ykasten/layered-neural-atlases):

- the frames, resized to the atlas resolution (768x432 there);
- one foreground mask per frame from a COCO Mask R-CNN: of the detections that score at least 0.5, the first
  (most confident) one of the wanted class, or of any class; a frame without one gets an empty mask;
- RAFT flow between consecutive frames in both directions (raft-things weights, 20 updates, the frames padded to a
  multiple of 8 by replicating their borders), computed here on the resized frames (NLA computes it on the source
  frames and resizes it); flow files (NLA's layout) are resized to the atlas resolution, their vectors rescaled;
- a flow vector is trusted where the round trip forward then backward ends less than one pixel (at the atlas
  resolution) from where it started.

Mask R-CNN and RAFT take minutes on a video, so the result is cached in ``cache_dir`` under a key of the settings
that produced it, and reused while the key matches.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm import tqdm

from text2live.errors import InputError, MissingWeightsError
from text2live.files import atomic_path
from text2live.io import FRAME_SUFFIXES

log = logging.getLogger("text2live")

CACHE_FILE = "inputs.pt"
CACHE_VERSION = 1
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")  # compression noise: foreground is >= 128 there, non-zero elsewhere
MASK_MIN_SCORE = 0.5  # detectron2's SCORE_THRESH_TEST in NLA's preprocess_mask_rcnn.py
RAFT_UPDATES = 20  # the iterations of NLA's raft_wrapper.py
RAFT_MIN_SIDE = 128  # torchvision's RAFT needs 16 feature pixels per side for its correlation pyramid
CONSISTENCY_THRESHOLD = 1.0  # pixels at the atlas resolution, as NLA's unwrap_utils.py
RATIO_TOLERANCE = 0.01  # how far a mask's or a flow file's aspect ratio may be from the frames' (relative)

# RAFT trained on FlyingChairs + FlyingThings3D, ported from the RAFT authors' raft-things.pth, which NLA uses.
FLOW_WEIGHTS = Raft_Large_Weights.C_T_V1
MASK_WEIGHTS = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
COCO_CATEGORIES: list[str] = MASK_WEIGHTS.meta["categories"]  # indexed by the model's labels
COCO_CLASSES = [c for c in COCO_CATEGORIES if c not in ("__background__", "N/A")]
ANYTHING = "anything"


@dataclass
class VideoInputs:
    """Everything NLA trains on, at the atlas resolution (H, W), on the CPU."""

    frames: torch.Tensor
    """[T, 3, H, W] float32 in [0, 1]."""
    masks: torch.Tensor
    """[T, 1, H, W] float32 in {0, 1}: the foreground object."""
    flow_forward: torch.Tensor
    """[T-1, 2, H, W] float32: the motion (dx, dy) in pixels from frame t to frame t+1."""
    flow_backward: torch.Tensor
    """[T-1, 2, H, W] float32: the motion in pixels from frame t+1 to frame t."""
    flow_forward_valid: torch.Tensor
    """[T-1, 1, H, W] bool: where the forward flow is consistent with the backward flow."""
    flow_backward_valid: torch.Tensor
    """[T-1, 1, H, W] bool: where the backward flow is consistent with the forward flow."""
    names: list[str]
    """The frames' names: their file stems, or 00000, 00001 ... for an MP4."""


def prepare_inputs(
    *,
    video: str | None,
    frames_dir: str | None,
    num_frames: int | None,
    width: int,
    height: int,
    masks_dir: str | None,
    flow_dir: str | None,
    mask_object: str = ANYTHING,
    mask_weights: str | None = None,
    flow_weights: str | None = None,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> VideoInputs:
    """The frames of ``video`` (an MP4) or ``frames_dir``, their masks and flow, from the cache when it matches.

    Masks come from ``masks_dir`` (one image per frame, named like the frames, non-zero = foreground) or from
    Mask R-CNN looking for ``mask_object``; flow comes from ``flow_dir`` (NLA's ``<a>_<b>.npy`` files) or from
    RAFT. Pretrained weights are downloaded into torch's hub cache unless ``mask_weights`` / ``flow_weights``
    name local files. The first ``num_frames`` frames are used (None: all).
    """
    size = (height, width)
    if num_frames is not None and num_frames < 2:
        raise InputError(f"num_frames={num_frames}: an atlas needs at least 2 frames")
    if masks_dir is None:
        check_mask_object(mask_object)
    source = _find_source(video, frames_dir, num_frames)
    frames_key = _digest({"version": CACHE_VERSION, "frames": source.spec(), "num_frames": num_frames, "size": size})
    masks_key = _digest({"frames": frames_key, "masks": _masks_spec(masks_dir, mask_object, mask_weights)})
    flow_key = _digest({"frames": frames_key, "flow": _flow_spec(flow_dir, flow_weights)})

    cache_path = Path(cache_dir) / CACHE_FILE
    cache = _read_cache(cache_path)
    if _cached(cache, "frames", frames_key) is None:
        cache = {"version": CACHE_VERSION}
    keys = {"masks": masks_key, "flow": flow_key}
    todo = [part for part, key in keys.items() if _cached(cache, part, key) is None]
    if "frames" in cache and not todo:
        log.info("reusing the prepared inputs in %s", cache_path)
    # Weights first, then files before networks: a missing or bad file stops the run before minutes of work.
    mask_model = _mask_model(mask_weights, progress) if "masks" in todo and masks_dir is None else None
    flow_model = _flow_model(flow_weights, progress) if "flow" in todo and flow_dir is None else None
    todo.sort(key=lambda part: (masks_dir if part == "masks" else flow_dir) is None)

    if "frames" not in cache:
        cache["frames"] = {"key": frames_key, **source.load(num_frames, size, progress)}
    frames = cache["frames"]
    images = frames["images"].float() / 255
    for part in todo:
        if part == "masks":
            masks = (
                mask_rcnn_masks(mask_model, images, mask_object, device=device, progress=progress)
                if masks_dir is None
                else _masks_from_folder(Path(masks_dir), frames, size)
            )
            cache["masks"] = {"key": masks_key, "masks": masks}
        else:
            forward, backward = (
                raft_flow(flow_model, images, device=device, progress=progress)
                if flow_dir is None
                else _flow_from_folder(Path(flow_dir), frames, size)
            )
            valid = consistent(forward, backward), consistent(backward, forward)
            cache["flow"] = {"key": flow_key, "forward": forward, "backward": backward, "valid": valid}
        _write_cache(cache_path, cache)  # each part as soon as it is done
    flow = cache["flow"]
    return VideoInputs(
        frames=images,
        masks=cache["masks"]["masks"].float(),
        flow_forward=flow["forward"],
        flow_backward=flow["backward"],
        flow_forward_valid=flow["valid"][0],
        flow_backward_valid=flow["valid"][1],
        names=list(frames["names"]),
    )


# frames -----------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Where the frames come from: an MP4 (``files`` is None) or the frame files of a folder."""

    path: Path
    files: list[Path] | None

    def spec(self) -> dict:
        if self.files is None:
            return {"video": str(self.path.resolve()), "file": _stat(self.path)}
        return {"frames_dir": str(self.path.resolve()), "files": [_stat(p) for p in self.files]}

    def load(self, num_frames: int | None, size: tuple[int, int], progress: bool) -> dict:
        if self.files is None:
            return _load_video(self.path, num_frames, size, progress)
        return _load_folder(self.path, self.files, size, progress)


def _find_source(video: str | None, frames_dir: str | None, num_frames: int | None) -> _Source:
    if video is not None and frames_dir is not None:
        raise InputError("both video= and frames_dir= are set: give the frames with only one of them")
    if video is None and frames_dir is None:
        raise InputError("neither video= nor frames_dir= is set: give an MP4 with video= or a folder with frames_dir=")
    if video is not None:
        path = Path(video).expanduser()
        if not path.is_file():
            raise InputError(f"video={video} does not exist: pass the path of an MP4 file")
        return _Source(path, None)
    folder = Path(frames_dir).expanduser()
    if not folder.is_dir():
        raise InputError(f"frames_dir={frames_dir} is not a folder: pass the folder that holds the video's frames")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise InputError(f"frames_dir={folder} holds no frames (*.jpg, *.jpeg, *.png): pass the folder of the frames")
    _check_count(len(files), num_frames, f"frames_dir={folder}")
    return _Source(folder, files[:num_frames])


def _check_count(count: int, num_frames: int | None, where: str) -> None:
    if num_frames is not None and count < num_frames:
        raise InputError(f"{where} holds {count} frames but num_frames={num_frames}: lower num_frames or add frames")
    if count < 2:
        raise InputError(f"{where} holds {count} frame: an atlas needs a video of at least 2 frames")


def _resized(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W], resized as :func:`text2live.io.load_frames` resizes the frames of a video edit."""
    height, width = size
    img = img.convert("RGB").resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def _load_folder(folder: Path, files: list[Path], size: tuple[int, int], progress: bool) -> dict:
    images = torch.empty(len(files), 3, *size, dtype=torch.uint8)
    source_size = None
    for i, path in enumerate(tqdm(files, desc="reading frames", unit="frame", disable=not progress)):
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"cannot read the frame {path} ({exc}): replace or remove it") from None
        if source_size is None:
            source_size = (img.height, img.width)
        elif (img.height, img.width) != source_size:
            raise InputError(
                f"the frames of {folder} are not all the same size: {files[0].name} is {source_size[1]}x"
                f"{source_size[0]} but {path.name} is {img.width}x{img.height}; a video's frames share one size"
            )
        images[i] = _resized(img, size)
    return {
        "images": images,
        "names": [p.stem for p in files],
        "file_names": [p.name for p in files],
        "source_size": list(source_size),
    }


def _load_video(path: Path, num_frames: int | None, size: tuple[int, int], progress: bool) -> dict:
    import imageio.v2 as imageio

    images = []
    source_size = None
    bar = tqdm(desc="reading frames", unit="frame", total=num_frames, disable=not progress)
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            for frame in reader:
                source_size = frame.shape[:2]
                images.append(_resized(Image.fromarray(frame), size))
                bar.update()
                if len(images) == num_frames:
                    break
        finally:
            reader.close()
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        raise InputError(
            f"cannot decode video={path} ({_last_line(exc)}): pass a video that ffmpeg can read, or its frames "
            "with frames_dir="
        ) from None
    finally:
        bar.close()
    if not images:
        raise InputError(f"video={path} holds no frames: pass a video that ffmpeg can read, or use frames_dir=")
    _check_count(len(images), num_frames, f"video={path}")
    names = [f"{i:05d}" for i in range(len(images))]
    return {"images": torch.stack(images), "names": names, "file_names": names, "source_size": list(source_size)}


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# masks ------------------------------------------------------------------------------------------------------


def check_mask_object(name: str) -> None:
    """Raises :class:`InputError` unless ``name`` is a COCO class or ``anything``."""
    if name == ANYTHING or name in COCO_CLASSES:
        return
    close = difflib.get_close_matches(name, COCO_CLASSES, n=3)
    closest = f" (closest: {', '.join(close)})" if close else ""
    raise InputError(
        f"mask_object={name!r} is not a COCO class{closest}: use one of the {len(COCO_CLASSES)} COCO classes "
        f"({', '.join(COCO_CLASSES[:6])}, ..., {COCO_CLASSES[-1]}) or {ANYTHING!r} for the most confident object"
    )


def mask_rcnn(state: dict | None = None) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` for COCO, with ``state`` loaded (None: random weights)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d)
    model = MaskRCNN(backbone, num_classes=len(COCO_CATEGORIES))
    if state is not None:
        model.load_state_dict(state)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0  # as torchvision sets it for these weights
    return model.eval()


@torch.inference_mode()
def mask_rcnn_masks(
    model: nn.Module,
    frames: torch.Tensor,
    mask_object: str,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    min_score: float = MASK_MIN_SCORE,
) -> torch.Tensor:
    """bool [T, 1, H, W]: per frame, the mask of the most confident ``mask_object`` (or any object) detected.

    ``frames``: [T, 3, H, W] in [0, 1]. A frame without the object gets an empty mask; an object found in no frame
    raises :class:`InputError` naming what was found instead.
    """
    model = model.eval().to(device)
    masks = torch.zeros(len(frames), 1, *frames.shape[-2:], dtype=torch.bool)
    found: dict[str, int] = {}
    hits = 0
    for t in tqdm(range(len(frames)), desc="Mask R-CNN", unit="frame", disable=not progress):
        out = model([frames[t].to(device)])[0]
        keep = out["scores"] >= min_score
        labels = [COCO_CATEGORIES[i] for i in out["labels"][keep].tolist()]
        for label in labels:
            found[label] = found.get(label, 0) + 1
        for k, label in enumerate(labels):
            if mask_object in (ANYTHING, label):
                masks[t, 0] = out["masks"][keep][k, 0].cpu() > 0.5
                hits += 1
                break
    if hits == 0:
        if not found:
            raise InputError(
                f"Mask R-CNN found no object in any of the {len(frames)} frames: give the masks with masks_dir="
            )
        what = "no object" if mask_object == ANYTHING else f"no {mask_object!r}"
        seen = ", ".join(sorted(found, key=lambda c: -found[c]))
        raise InputError(
            f"Mask R-CNN found {what} in any of the {len(frames)} frames (it found: {seen}): set mask_object= to "
            f"one of those, or give the masks with masks_dir="
        )
    return masks


def _mask_files(masks_dir: Path) -> dict[str, Path]:
    """The mask images of ``masks_dir`` by stem."""
    if not masks_dir.is_dir():
        raise InputError(f"masks_dir={masks_dir} is not a folder: pass the folder of one mask image per frame")
    files: dict[str, Path] = {}
    for path in sorted(masks_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in MASK_SUFFIXES:
            files.setdefault(path.stem, path)
    return files


def _foreground(mask: np.ndarray, lossy: bool) -> np.ndarray:
    """bool H x W from a mask image of any mode: any non-zero colour channel (alpha ignored)."""
    if mask.ndim == 3:
        if mask.shape[2] in (2, 4):
            mask = mask[..., :-1]
        mask = mask.max(axis=2)
    return mask >= 128 if lossy else mask > 0


def _masks_from_folder(masks_dir: Path, frames: dict, size: tuple[int, int]) -> torch.Tensor:
    files = _mask_files(masks_dir)
    names, source_size = frames["names"], tuple(frames["source_size"])
    height, width = size
    masks = torch.zeros(len(names), 1, height, width, dtype=torch.bool)
    for i, name in enumerate(names):
        path = files.get(name)
        if path is None:
            raise InputError(
                f"masks_dir={masks_dir} has no mask for frame {name}: give one image per frame, named like the "
                f"frame ({name}.png for instance)"
            )
        try:
            with Image.open(path) as img:
                mask = np.asarray(ImageOps.exif_transpose(img))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"cannot read the mask {path} of frame {name} ({exc}): replace it") from None
        if not _same_ratio(mask.shape[:2], source_size):
            raise InputError(
                f"the mask {path} of frame {name} is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                f"{source_size[1]}x{source_size[0]}, another aspect ratio: give masks of the frames' shape"
            )
        fg = _foreground(mask, lossy=path.suffix.lower() in LOSSY_SUFFIXES)
        fg = Image.fromarray(fg.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
        masks[i, 0] = torch.from_numpy(np.asarray(fg) > 0)
    return masks


def _same_ratio(shape: tuple[int, int], reference: tuple[int, int]) -> bool:
    ratio, expected = shape[1] / shape[0], reference[1] / reference[0]
    return abs(ratio - expected) <= RATIO_TOLERANCE * expected


def _masks_spec(masks_dir: str | None, mask_object: str, mask_weights: str | None) -> dict:
    if masks_dir is not None:
        folder = Path(masks_dir).expanduser()
        return {"masks_dir": str(folder.resolve()), "files": [_stat(p) for p in _mask_files(folder).values()]}
    return {"mask_object": mask_object, "weights": _weights_spec(mask_weights, MASK_WEIGHTS), "score": MASK_MIN_SCORE}


def _mask_model(weights: str | None, progress: bool) -> nn.Module:
    state = (
        _local_state(weights, "mask_weights")
        if weights is not None
        else _pretrained_state(
            MASK_WEIGHTS, "Mask R-CNN", "mask_weights=<local .pth>, or give masks with masks_dir=", progress
        )
    )
    try:
        return mask_rcnn(state)
    except (RuntimeError, KeyError) as exc:
        raise InputError(
            f"mask_weights={weights} does not hold the weights of torchvision's maskrcnn_resnet50_fpn "
            f"({_first_line(exc)}): pass {os.path.basename(MASK_WEIGHTS.url)} or a state dict of that model"
        ) from None


# flow -------------------------------------------------------------------------------------------------------


def _pad_to_8(height: int, width: int, minimum: int = 0) -> list[int]:
    """F.pad's [left, right, top, bottom] that centre a frame in the next multiple of 8, as RAFT's InputPadder.

    Sides shorter than ``minimum`` are padded up to it.
    """
    pad_h, pad_w = max(-height % 8, minimum - height), max(-width % 8, minimum - width)
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


@torch.inference_mode()
def raft_flow(
    model: nn.Module,
    frames: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    updates: int = RAFT_UPDATES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward flow [T-1, 2, H, W] in pixels between consecutive ``frames`` ([T, 3, H, W] in [0, 1]).

    ``model`` is a torchvision RAFT; the frames are padded to a multiple of 8 (and to torchvision's minimum of 128)
    by replicating their borders, and the flow is cropped back.
    """
    model = model.eval().to(device)
    count, _, height, width = frames.shape
    pad = _pad_to_8(height, width, minimum=RAFT_MIN_SIDE)
    forward = torch.empty(count - 1, 2, height, width)
    backward = torch.empty(count - 1, 2, height, width)
    for t in tqdm(range(count - 1), desc="RAFT", unit="pair", disable=not progress):
        pair = F.pad(frames[t : t + 2].to(device, torch.float32) * 2 - 1, pad, mode="replicate")  # RAFT takes [-1, 1]
        flow = model(pair, pair.flip(0), num_flow_updates=updates)[-1]
        flow = flow[:, :, pad[2] : pad[2] + height, pad[0] : pad[0] + width].float().cpu()
        forward[t], backward[t] = flow[0], flow[1]
    return forward, backward


def consistency_error(flow_ab: torch.Tensor, flow_ba: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W]: how far from x, in pixels, the round trip x -> x + flow_ab(x) -> back along flow_ba ends.

    ``flow_ba`` is sampled bilinearly and is zero outside the frame (as NLA's cv2.remap), so a pixel that leaves
    the frame comes back only if it moved less than a pixel.
    """
    _, _, height, width = flow_ab.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow_ab.dtype), torch.arange(width, dtype=flow_ab.dtype), indexing="ij"
    )
    x = xs + flow_ab[:, 0]
    y = ys + flow_ab[:, 1]
    grid = torch.stack((2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1), dim=-1)
    back = F.grid_sample(flow_ba, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (flow_ab + back).norm(dim=1, keepdim=True)


def consistent(flow_ab: torch.Tensor, flow_ba: torch.Tensor, threshold: float = CONSISTENCY_THRESHOLD) -> torch.Tensor:
    """bool [N, 1, H, W]: where ``flow_ab`` agrees with ``flow_ba`` (NLA's rule: a round trip within 1 pixel)."""
    return torch.cat([consistency_error(ab[None], ba[None]) < threshold for ab, ba in zip(flow_ab, flow_ba)])


def _flow_file(flow_dir: Path, frames: dict, a: int, b: int) -> Path:
    """NLA's ``<frame file a>_<frame file b>.npy`` (00000.jpg_00001.jpg.npy), or the same with the stems."""
    names = frames["file_names"], frames["names"]
    candidates = dict.fromkeys(flow_dir / f"{n[a]}_{n[b]}.npy" for n in names)
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(
        f"flow_dir={flow_dir} has no flow from frame {frames['names'][a]} to {frames['names'][b]} (looked for "
        f"{' and '.join(p.name for p in candidates)}): give both directions for every pair of consecutive frames"
    )


def _read_flow(path: Path, pair: str) -> np.ndarray:
    try:
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = _first_line(exc)
        raise InputError(f"cannot read the flow file {path} of frames {pair} ({reason}): replace it") from None
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(
            f"the flow file {path} of frames {pair} has shape {tuple(flow.shape)}, not H x W x 2: give (dx, dy) in "
            "pixels for every pixel"
        )
    if not np.isfinite(flow).all():
        raise InputError(f"the flow file {path} of frames {pair} holds NaN or infinite values: compute it again")
    return flow


def _fit_flow(
    flow: np.ndarray, source_size: tuple[int, int], size: tuple[int, int], path: Path, pair: str
) -> torch.Tensor:
    """[2, H, W] at ``size``: ``flow`` (h x w x 2) resized bilinearly, dx scaled by W / w and dy by H / h.

    (NLA's resize_flow scales dx by H / h and dy by W / w: the same while the aspect ratio is kept.)
    """
    h, w = flow.shape[:2]
    if (h, w) != tuple(source_size):
        left, right, top, bottom = _pad_to_8(*source_size)
        if (h, w) == (source_size[0] + top + bottom, source_size[1] + left + right):
            # NLA's raft_wrapper.py saves the flow of the frames padded to a multiple of 8: crop the padding.
            flow = flow[top : h - bottom, left : w - right]
            h, w = source_size
        elif not _same_ratio((h, w), source_size):
            raise InputError(
                f"the flow file {path} of frames {pair} is {w}x{h} but the frames are {source_size[1]}x"
                f"{source_size[0]}, another aspect ratio: give flow computed on these frames"
            )
    out = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)[None]
    if (h, w) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        out[:, 0] *= size[1] / w
        out[:, 1] *= size[0] / h
    return out[0]


def _flow_from_folder(flow_dir: Path, frames: dict, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    names = frames["names"]
    source_size = tuple(frames["source_size"])
    forward = torch.empty(len(names) - 1, 2, *size)
    backward = torch.empty(len(names) - 1, 2, *size)
    for t in range(len(names) - 1):
        pair = f"{names[t]} and {names[t + 1]}"
        paths = _flow_file(flow_dir, frames, t, t + 1), _flow_file(flow_dir, frames, t + 1, t)
        flows = [_read_flow(path, pair) for path in paths]
        if flows[0].shape != flows[1].shape:
            raise InputError(
                f"the forward and backward flow files of frames {pair} differ in shape ({flows[0].shape} and "
                f"{flows[1].shape}): give both at one resolution"
            )
        forward[t] = _fit_flow(flows[0], source_size, size, paths[0], pair)
        backward[t] = _fit_flow(flows[1], source_size, size, paths[1], pair)
    return forward, backward


def _flow_spec(flow_dir: str | None, flow_weights: str | None) -> dict:
    if flow_dir is not None:
        folder = Path(flow_dir).expanduser()
        if not folder.is_dir():
            raise InputError(f"flow_dir={flow_dir} is not a folder: pass the folder of the <a>_<b>.npy flow files")
        files = sorted(folder.glob("*.npy"))
        return {"flow_dir": str(folder.resolve()), "files": [_stat(p) for p in files]}
    return {"raft": _weights_spec(flow_weights, FLOW_WEIGHTS), "updates": RAFT_UPDATES}


def _flow_model(weights: str | None, progress: bool) -> nn.Module:
    state = (
        _local_state(weights, "flow_weights")
        if weights is not None
        else _pretrained_state(FLOW_WEIGHTS, "RAFT", "flow_weights=<local .pth>, or give flow with flow_dir=", progress)
    )
    model = raft_large(weights=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise InputError(
            f"flow_weights={weights} does not hold the weights of torchvision's raft_large ({_first_line(exc)}): "
            f"pass {os.path.basename(FLOW_WEIGHTS.url)} or a state dict of that model"
        ) from None
    return model.eval()


# weights ----------------------------------------------------------------------------------------------------


def _pretrained_state(weights, what: str, overrides: str, progress: bool) -> dict:
    """The state dict of torchvision ``weights`` from torch's hub cache, downloaded there if missing."""
    name = os.path.basename(weights.url)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except (URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MissingWeightsError(
            f"{what} needs {name}, which is not in {folder} and could not be downloaded ({reason}): copy it there "
            f"from {weights.url}, or pass {overrides}"
        ) from None


def _local_state(path: str, option: str) -> dict:
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"{option}={path} does not exist: pass the path of a .pth file of the model's weights")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{option}={path} is not a PyTorch file of plain tensors: pass a state dict (.pth)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {option}={path} as PyTorch weights ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{option}={path} holds a {type(state).__name__}, not a state dict of the model's weights")
    return state


def _weights_spec(path: str | None, weights) -> list:
    if path is None:
        return [weights.url]
    file = Path(path).expanduser()
    return [str(file.resolve()), *(_stat(file)[1:] if file.is_file() else [])]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# cache ------------------------------------------------------------------------------------------------------


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        log.warning("cannot read the cached inputs %s (%s): preparing them again", path, _first_line(exc))
        return {}
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION:
        return {}
    return cache


def _cached(cache: dict, part: str, key: str) -> dict | None:
    entry = cache.get(part)
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def _write_cache(path: Path, cache: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(cache, tmp)
