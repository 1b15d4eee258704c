"""Image-classification data sources: the generated default, CIFAR-10 python batches, image folders.

Every source gives an `ImageData`: uint8 tensors N x 3 x H x W for a training and a validation split,
int64 labels and the class names. `open_source("synthetic" | "cifar10:PATH" | "folder:PATH")` checks the
location at once (one clear ValueError line for a bad path) and reads the pixels only on `load()`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageData:
    train_x: torch.Tensor  # uint8, N x 3 x H x W
    train_y: torch.Tensor  # int64, N
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------
# The generated default: textured objects in clutter
# ---------------------------------------------------------------------------------------------------------

# name -> (pattern family, orientation in degrees, period in pixels of the native 64-pixel image).
# The periods fall in four bands. Resampled to side s, a period P spans P * s / 64 pixels and fades into
# flat colour (or faint moire) once that nears the 2-pixel limit, so the bands become legible one by one
# at about s = 14, 22, 33 and 48 pixels: accuracy climbs step by step with the input resolution over the
# whole range a TinyNet proxy uses (19 to 64 pixels). Random colours, contrast, phase, period and angle
# jitter, and clutter strokes of every frequency leave no shortcut but the pattern's structure.
TEXTURES: dict[str, tuple[str, float, float]] = {
    "bars-0-p12": ("bars", 0.0, 12.0),
    "bars-90-p12": ("bars", 90.0, 12.0),
    "checker-p12": ("checker", 0.0, 12.0),
    "bars-45-p7": ("bars", 45.0, 7.0),
    "bars-135-p7": ("bars", 135.0, 7.0),
    "dots-p7": ("dots", 0.0, 7.0),
    "rings-p4.5": ("rings", 0.0, 4.5),
    "checker-45-p4.5": ("checker", 45.0, 4.5),
    "bars-0-p3": ("bars", 0.0, 3.0),
    "bars-90-p3": ("bars", 90.0, 3.0),
}
MAX_RADIUS = 20.0  # of the textured object, in pixels of the 64-pixel image
GENERATOR_VERSION = 2  # bump with any change to the drawing code: it keys the disk cache


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated set; equal specs give bit-identical sets (they key the disk cache)."""

    seed: int = 0
    train_size: int = 10_000
    val_size: int = 2_500
    resolution: int = 64
    clutter: int = 5  # random strokes over the background
    noise: float = 0.04  # std of the per-pixel Gaussian noise, on the 0..1 scale

    def key(self) -> str:
        """Hash of the parameters and of the class table and generator version they are drawn with."""
        described = {**asdict(self), "textures": TEXTURES, "generator": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _pattern(family: str, u: torch.Tensor, v: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Pattern intensity in 0..1 at object-frame coordinates (u, v)."""
    w = 2 * math.pi / period
    if family == "bars":
        wave = torch.sin(w * u)
    elif family == "checker":
        wave = torch.sin(w * u) * torch.sin(w * v) * 2
    elif family == "rings":
        wave = torch.sin(w * torch.sqrt(u * u + v * v))
    else:  # dots
        wave = torch.cos(w * u) + torch.cos(w * v) - 0.6
    return (0.5 + 1.5 * wave).clamp_(0, 1)  # a softened square wave: crisp stripes, few harmonics


def _grid(n: int, side: int, pixel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y), each n x 1 x side x side, in units of `pixel`."""
    axis = (torch.arange(side, dtype=torch.float32) + 0.5) * pixel
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x.expand(n, 1, side, side), y.expand(n, 1, side, side)


class Draw:
    """Per-image random numbers, n x 1 x 1 x 1, from one generator (so a split is one seeded stream)."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen = n, gen

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(self.n, 1, 1, 1, generator=self.gen)

    def colour(self) -> torch.Tensor:
        return torch.rand(self.n, 3, 1, 1, generator=self.gen)


def draw_background(draw: Draw, side: int, strokes: int) -> torch.Tensor:
    """A smooth colour field crossed by line segments of random colour, direction, length and width."""
    scale = side / 64
    coarse = torch.rand(draw.n, 3, 3, 3, generator=draw.gen)
    image = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp_(0, 1)
    x, y = _grid(draw.n, side, 1.0)
    for _ in range(strokes):
        x0, y0 = draw.uniform(0, side), draw.uniform(0, side)
        angle, length, width = draw.uniform(0, math.pi), draw.uniform(8, 30) * scale, draw.uniform(0.6, 2) * scale
        dx, dy = torch.cos(angle), torch.sin(angle)
        t = ((x - x0) * dx + (y - y0) * dy).clamp(-length / 2, length / 2)
        stroke = torch.hypot(x - x0 - t * dx, y - y0 - t * dy) < width
        image = torch.where(stroke, draw.colour(), image)
    return image


def _object(labels: torch.Tensor, draw: Draw, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The textured object on a square patch around it: (premultiplied colour, coverage, patch corner).

    Drawn at twice the resolution and box-filtered down, so its finest stripes are anti-aliased rather
    than turned into moire; only the patch is drawn, which is most of the generator's speed.
    """
    n, scale = len(labels), side / 64
    patch = math.ceil(2 * MAX_RADIUS * scale) + 1
    radius = draw.uniform(13, MAX_RADIUS) * scale
    cx = draw.uniform(0, 1) * (side - 2 * radius) + radius
    cy = draw.uniform(0, 1) * (side - 2 * radius) + radius
    corner = torch.cat([cx, cy], 1).view(n, 2).sub(patch / 2).floor().clamp(0, side - patch).long()
    x, y = _grid(n, 2 * patch, 0.5)
    x, y = x + corner[:, 0].view(n, 1, 1, 1), y + corner[:, 1].view(n, 1, 1, 1)

    shape_angle, aspect, power = draw.uniform(0, math.pi), draw.uniform(0.7, 1.0), draw.uniform(2.0, 5.0)
    ca, sa = torch.cos(shape_angle), torch.sin(shape_angle)
    su = ((x - cx) * ca + (y - cy) * sa) / radius
    sv = (-(x - cx) * sa + (y - cy) * ca) / (radius * aspect)
    inside = (su.abs() ** power + sv.abs() ** power < 1).float()

    names = list(TEXTURES)
    angle = torch.tensor([TEXTURES[name][1] for name in names])[labels].view(n, 1, 1, 1) * math.pi / 180
    theta = angle + draw.uniform(-0.15, 0.15)
    period = torch.tensor([TEXTURES[name][2] for name in names])[labels].view(n, 1, 1, 1)
    period = period * draw.uniform(0.92, 1.08) * scale
    ct, st = torch.cos(theta), torch.sin(theta)
    u = (x - cx) * ct + (y - cy) * st + draw.uniform(0, 64)  # random phase
    v = -(x - cx) * st + (y - cy) * ct + draw.uniform(0, 64)
    p = torch.empty_like(u)
    families = [TEXTURES[names[int(c)]][0] for c in labels]
    for family in sorted(set(families)):
        idx = torch.tensor([i for i, f in enumerate(families) if f == family])
        p[idx] = _pattern(family, u[idx], v[idx], period[idx])

    ink, paper = draw.colour(), draw.colour()
    paper = torch.where((ink - paper).norm(dim=1, keepdim=True) < 0.4, 1 - ink, paper)  # a visible contrast
    paper = ink + (paper - ink) * draw.uniform(0.5, 1.0)  # ... at a random strength
    colour = F.avg_pool2d(inside * (ink * p + paper * (1 - p)), 2)
    return colour, F.avg_pool2d(inside, 2), corner


def _render(labels: torch.Tensor, spec: SyntheticSpec, gen: torch.Generator) -> torch.Tensor:
    """One uint8 image per label: background and clutter, the textured object, then pixel noise."""
    draw, side = Draw(len(labels), gen), spec.resolution
    image = draw_background(draw, side, spec.clutter)
    colour, cover, corner = _object(labels, draw, side)
    patch = colour.shape[-1]
    for i, (left, top) in enumerate(corner.tolist()):
        region = image[i, :, top:top + patch, left:left + patch]
        region.mul_(1 - cover[i]).add_(colour[i])
    image = image + spec.noise * torch.randn(image.shape, generator=gen)
    return (image.clamp_(0, 1) * 255).round_().to(torch.uint8)


def _generate_split(size: int, spec: SyntheticSpec, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + stream)
    k = len(TEXTURES)
    labels = (torch.arange(size) % k)[torch.randperm(size, generator=gen)]
    chunks = [_render(labels[i:i + 100], spec, gen) for i in range(0, size, 100)]
    return torch.cat(chunks), labels


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nasplat"


_GENERATED: dict[SyntheticSpec, ImageData] = {}


def generate(spec: SyntheticSpec = SyntheticSpec(), *, disk_cache: bool = True) -> ImageData:
    """The generated set for `spec`: from memory, else from ~/.cache/nasplat, else rendered (seconds)."""
    if spec not in _GENERATED:
        def render() -> dict[str, torch.Tensor]:
            train_x, train_y = _generate_split(spec.train_size, spec, stream=0)
            val_x, val_y = _generate_split(spec.val_size, spec, stream=1)
            return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}

        tensors = cached_tensors(f"synthetic-{spec.key()}", render) if disk_cache else render()
        _GENERATED[spec] = ImageData(**tensors, classes=tuple(TEXTURES))
    return _GENERATED[spec]


def cached_tensors(name: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors saved as ~/.cache/nasplat/NAME.pt, else `build()`'s, saved there for the next process. NAME
    must change with anything that changes what `build` makes (a generated set's parameters and code)."""
    path = _cache_dir() / f"{name}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, TypeError, pickle.UnpicklingError):
            pass  # a torn or stale cache file is simply rebuilt
    tensors = build()
    _save_atomically(path, tensors)
    return tensors


def _save_atomically(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Best effort: a read-only home directory only costs the next process a regeneration."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(tensors, tmp)
        tmp.replace(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------
# Sources: "synthetic", "cifar10:PATH", "folder:PATH"
# ---------------------------------------------------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_EXPECTED = "expected the CIFAR-10 python batches folder 'cifar-10-batches-py'"
FOLDER_EXPECTED = "expected PATH/train/<class>/*.png|jpg and PATH/val/<class>/..., or PATH/<class>/*.png|jpg"
VAL_FRACTION = 0.2  # of a single image-folder tree, chosen by a hash of each file's path


class Source(ABC):
    """A named data source: its class names and default side are known before any pixel is read."""

    classes: tuple[str, ...]
    resolution: int

    @abstractmethod
    def load(self) -> ImageData: ...


class SyntheticSource(Source):
    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        self.classes = tuple(TEXTURES)
        self.resolution = spec.resolution

    def load(self) -> ImageData:
        return generate(self.spec)


class Cifar10Source(Source):
    def __init__(self, text: str, path: Path):
        self.text = text
        self.root = _cifar_root(text, path)
        self.train_files = sorted(self.root.glob("data_batch_[1-5]"))
        self.resolution = 32
        meta = self.root / "batches.meta"
        names = _unpickle(text, meta).get(b"label_names") if meta.exists() else None
        self.classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names) if names \
            else CIFAR10_CLASSES

    def load(self) -> ImageData:
        train_x, train_y = zip(*(self._batch(f) for f in self.train_files))
        val_x, val_y = self._batch(self.root / "test_batch")
        return ImageData(torch.cat(train_x), torch.cat(train_y), val_x, val_y, self.classes)

    def _batch(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _unpickle(self.text, path)
        data, labels = batch.get(b"data"), batch.get(b"labels")
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != 3072 or labels is None or len(labels) != shape[0]:
            found = f"keys {sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)}" + (
                f", data of shape {tuple(shape)}" if shape is not None else "")
            raise UserError(f"{self.text}: {path} is not a CIFAR-10 python batch (expected a dict with b'data' "
                            f"N x 3072 uint8 and N b'labels'; found {found})")
        x = torch.as_tensor(data).to(torch.uint8).view(-1, 3, 32, 32)
        y = torch.as_tensor(list(labels), dtype=torch.int64)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise UserError(f"{self.text}: {path} has labels outside 0..{len(self.classes) - 1} "
                            f"(found {int(y.min())}..{int(y.max())})")
        return x, y


class FolderSource(Source):
    def __init__(self, text: str, path: Path, resolution: int):
        self.text = text
        self.resolution = resolution
        if not path.is_dir():
            raise UserError(f"{text}: {path} {what_is(path)} ({FOLDER_EXPECTED})")
        if (path / "train").is_dir() and (path / "val").is_dir():
            train = _class_files(text, path / "train")
            val = _class_files(text, path / "val")
            unknown = sorted(set(val) - set(train))
            if unknown:
                raise UserError(f"{text}: {path / 'val'} has classes missing from {path / 'train'}: "
                                f"{', '.join(unknown)} ({FOLDER_EXPECTED})")
            self.classes = tuple(sorted(train))
            self.train = [(f, self.classes.index(c)) for c, files in sorted(train.items()) for f in files]
            self.val = [(f, self.classes.index(c)) for c, files in sorted(val.items()) for f in files]
        else:
            tree = _class_files(text, path)
            self.classes = tuple(sorted(tree))
            pairs = [(f, self.classes.index(c)) for c, files in sorted(tree.items()) for f in files]
            in_val = [hash_fraction(f.relative_to(path).as_posix()) < VAL_FRACTION for f, _ in pairs]
            self.train = [p for p, v in zip(pairs, in_val) if not v]
            self.val = [p for p, v in zip(pairs, in_val) if v]

    def load(self) -> ImageData:
        train_x, train_y = self._read(self.train)
        val_x, val_y = self._read(self.val)
        return ImageData(train_x, train_y, val_x, val_y, self.classes)

    def _read(self, pairs: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        side = self.resolution
        x = torch.empty(len(pairs), 3, side, side, dtype=torch.uint8)
        for i, (path, _) in enumerate(pairs):
            try:
                with Image.open(path) as image:
                    rgb = _square(image.convert("RGB"), side)
            except (OSError, UnidentifiedImageError) as error:
                raise UserError(f"{self.text}: cannot read image {path} ({error})") from None
            x[i] = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(side, side, 3).permute(2, 0, 1)
        return x, torch.tensor([label for _, label in pairs], dtype=torch.int64)


def open_source(data: str, *, resolution: int | None = None) -> Source:
    """Parses a data name and checks its location; `resolution` is the side folder images are stored at
    (generated and CIFAR images keep their native side)."""
    kind, _, location = data.partition(":")
    if kind == "synthetic" and not location:
        return SyntheticSource(SyntheticSpec())
    if kind in ("cifar10", "folder") and location:
        path = Path(location).expanduser()
        if kind == "cifar10":
            return Cifar10Source(data, path)
        return FolderSource(data, path, resolution or 64)
    raise UserError(f"unknown data source {data!r}; expected 'synthetic', 'cifar10:PATH' or 'folder:PATH'")


def what_is(path: Path) -> str:
    if not path.exists():
        return "does not exist"
    return "is a file, not a folder" if not path.is_dir() else "is a folder"


def _listing(path: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "it is empty"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "found " + ", ".join(names[:limit]) + more


def _cifar_root(text: str, path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"{text}: {path} {what_is(path)} ({CIFAR10_EXPECTED})")
    for root in (path, path / "cifar-10-batches-py"):
        if (root / "data_batch_1").is_file():
            if not (root / "test_batch").is_file():
                raise UserError(f"{text}: no test_batch in {root} ({CIFAR10_EXPECTED}; {_listing(root)})")
            return root
    raise UserError(f"{text}: no data_batch_1 in {path} ({CIFAR10_EXPECTED}; {_listing(path)})")


def _unpickle(text: str, path: Path) -> dict:
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise UserError(f"{text}: cannot unpickle {path} ({CIFAR10_EXPECTED}; {type(error).__name__}: "
                        f"{error})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{text}: {path} holds a {type(batch).__name__}, not a dict ({CIFAR10_EXPECTED})")
    return batch


def _class_files(text: str, root: Path) -> dict[str, list[Path]]:
    tree = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            for d in sorted(root.iterdir()) if d.is_dir()}
    tree = {name: files for name, files in tree.items() if files}
    if not tree:
        raise UserError(f"{text}: no class folders with images in {root} ({FOLDER_EXPECTED}; {_listing(root)})")
    return tree


def hash_fraction(name: str) -> float:
    """A stable pseudo-random number in [0, 1) for a file name: the split survives added files."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16**8


def _square(image, side: int):
    """Scales the shorter side to `side` (PIL's filters antialias) and crops the centre square."""
    w, h = image.size
    s = side / min(w, h)
    image = image.resize((max(side, round(w * s)), max(side, round(h * s))), resample=2)  # 2: bilinear
    w, h = image.size
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))
