"""Object-detection data: generated shapes (the default, no download) and COCO-format folders.

Every source gives a `DetectionData`: uint8 images N x 3 x S x S and padded boxes N x M x 5, one row
(x1, y1, x2, y2, class) per object with coordinates normalised to [0, 1] of the image's width and height, so
resizing the images never changes the targets; padding rows have class -1. `open_detection_source("synthetic"
| "coco:PATH")` checks the location at once (one clear ValueError line for bad input) and reads the pixels only
on `load()`.

COCO layout (as the 2017 release ships): PATH/annotations/instances_<split>.json with the images in
PATH/<split>/, for one split whose name starts with "train" and one whose name starts with "val". Crowd
annotations (iscrowd=1) are left out; categories become classes 0.. in the order of their ids; each image is
resized to S x S (its aspect ratio is not kept: the boxes are normalised per axis, so they stay exact).
"""
from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .datasets import Draw, cached_tensors, draw_background, what_is

CLASSES = ("rectangle", "ellipse", "triangle", "cross", "ring")
GENERATOR_VERSION = 2  # bump with any change to the drawing code: it keys the disk cache


@dataclass(frozen=True)
class DetectionData:
    train_x: torch.Tensor  # uint8, N x 3 x S x S
    train_boxes: torch.Tensor  # float32, N x M x 5: (x1, y1, x2, y2, class), normalised; padding class -1
    val_x: torch.Tensor
    val_boxes: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DetectionSpec:
    """Parameters of the generated set; equal specs give bit-identical sets."""

    seed: int = 0
    train_size: int = 4000  # at 1,000 a 1.8G detector overfits within 10 epochs (validation loss 2x training)
    val_size: int = 200
    resolution: int = 128
    max_objects: int = 6  # objects per image: uniform in 1..max_objects
    min_size: float = 0.08  # an object's longer side, as a fraction of the image side: log-uniform in between
    max_size: float = 0.6
    noise: float = 0.03

    def key(self) -> str:
        described = {**asdict(self), "generator": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _shape_mask(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the object-local coordinates (u, v), [-1, 1]^2 being the object's box, are inside class `shape`."""
    box = (u.abs() <= 1) & (v.abs() <= 1)
    if shape == 0:  # rectangle
        return box
    if shape == 2:  # triangle, apex up
        return box & (u.abs() <= (v + 1) / 2)
    if shape == 3:  # cross
        return box & ((u.abs() <= 0.3) | (v.abs() <= 0.3))
    r2 = u * u + v * v
    return (r2 <= 1) & (r2 >= 0.45) if shape == 4 else r2 <= 1  # ring, ellipse


def render(n: int, spec: DetectionSpec, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images and their boxes drawn from `gen`: a textured background, then up to `max_objects` shapes of
    random class, colour, size and aspect ratio, later ones drawn over earlier ones. Each box is the tight box of
    its shape's pixels (an object hidden entirely by later ones, or too small to cover a pixel centre, is left
    out).

    Each shape's mask is computed only for the images that drew its class, and the colours are laid down in one
    pass by the frontmost object at each pixel, instead of one full-image pass per object."""
    side, draw = spec.resolution, Draw(n, gen)
    image = draw_background(draw, side, strokes=6)
    coords = torch.arange(side, dtype=torch.float32) + 0.5  # pixel centres
    x, y = coords.view(1, 1, side), coords.view(1, side, 1)
    count = torch.randint(1, spec.max_objects + 1, (n,), generator=gen)
    masks = torch.zeros(n, spec.max_objects, side, side, dtype=torch.bool)
    classes = torch.full((n, spec.max_objects), -1)
    colours = torch.empty(n, spec.max_objects, 3)
    for k in range(spec.max_objects):
        longer = side * torch.exp(draw.uniform(math.log(spec.min_size), math.log(spec.max_size)))
        ratio = torch.exp(draw.uniform(math.log(0.5), math.log(2.0)))  # width / height
        w = torch.where(ratio >= 1, longer, longer * ratio).view(n, 1, 1)
        h = torch.where(ratio >= 1, longer / ratio, longer).view(n, 1, 1)
        cx = w / 2 + draw.uniform(0, 1).view(n, 1, 1) * (side - w)
        cy = h / 2 + draw.uniform(0, 1).view(n, 1, 1) * (side - h)
        cls = torch.randint(0, len(CLASSES), (n,), generator=gen)
        colours[:, k] = torch.rand(n, 3, generator=gen)
        drawn = k < count
        for shape in range(len(CLASSES)):
            chosen = drawn & (cls == shape)
            masks[chosen, k] = _shape_mask(shape, (x - cx[chosen]) / (w[chosen] / 2),
                                           (y - cy[chosen]) / (h[chosen] / 2))
        classes[:, k] = torch.where(drawn, cls, -1)
    order = torch.arange(1, spec.max_objects + 1, dtype=torch.int16).view(1, -1, 1, 1)  # int16: the masked product stays narrow
    front = (masks * order).amax(dim=1).long() - 1  # n x S x S: the last object drawn at each pixel, -1 for none
    painted = colours.gather(1, front.clamp(min=0).flatten(1)[..., None].expand(-1, -1, 3))  # n x S*S x 3
    image = torch.where(front[:, None] >= 0, painted.transpose(1, 2).view(n, 3, side, side), image)
    image = (image + spec.noise * torch.randn(image.shape, generator=gen)).clamp_(0, 1)
    boxes = torch.zeros(n, spec.max_objects, 5)
    boxes[..., 4] = -1
    for k in range(spec.max_objects):
        mask = masks[:, k]
        rows, cols = mask.any(dim=2), mask.any(dim=1)  # n x S each: the object's full extent, not only what shows
        present = (classes[:, k] >= 0) & (front == k).flatten(1).any(dim=1)
        box = torch.stack([_first(cols), _first(rows), side - _first(cols.flip(1)), side - _first(rows.flip(1))],
                          dim=1).float() / side
        boxes[present, k, :4] = box[present]
        boxes[present, k, 4] = classes[present, k].float()
    return (image * 255).round_().to(torch.uint8), boxes


def _first(flags: torch.Tensor) -> torch.Tensor:
    """Index of the first True of each row."""
    return flags.to(torch.uint8).argmax(dim=1)


class DetectionSource(ABC):
    resolution: int
    classes: tuple[str, ...]

    @abstractmethod
    def load(self) -> DetectionData: ...


class SyntheticDetection(DetectionSource):
    def __init__(self, spec: DetectionSpec):
        self.spec = spec
        self.resolution = spec.resolution
        self.classes = CLASSES

    def load(self) -> DetectionData:
        spec = self.spec

        def build() -> dict[str, torch.Tensor]:
            # one generator stream per split, so that the validation images do not depend on train_size
            train_x, train_b = render(spec.train_size, spec, torch.Generator().manual_seed(2 * spec.seed))
            val_x, val_b = render(spec.val_size, spec, torch.Generator().manual_seed(2 * spec.seed + 1))
            return {"train_x": train_x, "train_boxes": train_b, "val_x": val_x, "val_boxes": val_b}

        t = cached_tensors(f"detection-{spec.key()}", build)
        return DetectionData(t["train_x"], t["train_boxes"], t["val_x"], t["val_boxes"], CLASSES)


class CocoDetection(DetectionSource):
    """COCO-format folders (see the module docstring), read with the standard library's json and PIL."""

    def __init__(self, root: Path, *, resolution: int):
        if not root.is_dir():
            raise UserError(f"--data coco:{root}: {what_is(root)}; give a folder holding annotations/"
                            f"instances_<split>.json and the <split>/ image folders")
        self.root, self.resolution = root, resolution
        self.files = {split: self._annotations(split) for split in ("train", "val")}
        categories = sorted(json.loads(self.files["train"].read_text())["categories"], key=lambda c: c["id"])
        self.category_index = {c["id"]: i for i, c in enumerate(categories)}
        self.classes = tuple(c["name"] for c in categories)

    def _annotations(self, split: str) -> Path:
        found = sorted((self.root / "annotations").glob(f"instances_{split}*.json"))
        if not found:
            raise UserError(f"--data coco:{self.root}: no annotations/instances_{split}*.json; a COCO folder "
                            f"holds annotations/instances_<split>.json for a train and a val split")
        return found[0]

    def load(self) -> DetectionData:
        train = self._split(self.files["train"])
        val = self._split(self.files["val"])
        width = max(train[1].shape[1], val[1].shape[1])
        return DetectionData(train[0], _pad(train[1], width), val[0], _pad(val[1], width), self.classes)

    def _split(self, file: Path) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        try:
            data = json.loads(file.read_text())
            images, annotations = data["images"], data["annotations"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise UserError(f"{file} is not a COCO instances file ({type(e).__name__}: {e}); it needs "
                            f"'images', 'annotations' and 'categories'") from None
        folder = self.root / file.stem.removeprefix("instances_")
        per_image: dict[int, list[list[float]]] = {im["id"]: [] for im in images}
        sizes = {im["id"]: (im["width"], im["height"]) for im in images}
        for a in annotations:
            if a.get("iscrowd", 0) or a["category_id"] not in self.category_index:
                continue
            x, y, w, h = a["bbox"]
            iw, ih = sizes[a["image_id"]]
            per_image[a["image_id"]].append([x / iw, y / ih, (x + w) / iw, (y + h) / ih,
                                             self.category_index[a["category_id"]]])
        side = self.resolution
        pixels = torch.empty(len(images), 3, side, side, dtype=torch.uint8)
        for i, im in enumerate(images):
            path = folder / im["file_name"]
            try:
                with Image.open(path) as opened:
                    picture = opened.convert("RGB").resize((side, side), Image.BILINEAR)
            except (FileNotFoundError, UnidentifiedImageError) as e:
                raise UserError(f"{path}: {type(e).__name__}: the image {file.name} lists cannot be read") from None
            pixels[i] = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
        width = max([len(b) for b in per_image.values()] + [1])
        boxes = torch.zeros(len(images), width, 5)
        boxes[..., 4] = -1
        for i, im in enumerate(images):
            rows = per_image[im["id"]]
            if rows:
                boxes[i, :len(rows)] = torch.tensor(rows).clamp_(min=0)
                boxes[i, :len(rows), :4].clamp_(max=1)
        return pixels, boxes


def _pad(boxes: torch.Tensor, width: int) -> torch.Tensor:
    if boxes.shape[1] == width:
        return boxes
    padding = torch.zeros(len(boxes), width - boxes.shape[1], 5)
    padding[..., 4] = -1
    return torch.cat([boxes, padding], dim=1)


def open_detection_source(data: str, *, resolution: int | None = None) -> DetectionSource:
    """The source `data` names: "synthetic" (generated at `resolution`, default 128) or "coco:PATH" (resized to
    `resolution`, default 128)."""
    side = resolution or DetectionSpec.resolution
    if data == "synthetic":
        return SyntheticDetection(DetectionSpec(resolution=side))
    kind, _, path = data.partition(":")
    if kind == "coco" and path:
        return CocoDetection(Path(path).expanduser(), resolution=side)
    raise UserError(f"--data {data!r} is not a detection data source; use synthetic or coco:PATH")
