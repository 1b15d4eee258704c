"""Crowd-counting data: generated crowds (the default, no download) and ShanghaiTech-style folders.

Every source gives a `CrowdData`: uint8 images N x 3 x S x S and float32 density maps N x 1 x S x S for a
training and a validation split, each map summing to its image's head count (counting by density: a model
predicts the map and its sum is the count). Maps are made as the field makes them (MCNN, CSRNet): one
Gaussian per annotated head, its sigma geometry-adaptive (`adaptive_sigmas`). `open_crowd_source("synthetic"
| "shanghaitech:PATH")` checks the location at once (one clear ValueError line for bad input) and reads the
pixels only on `load()`.
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
import torch.nn.functional as F
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from scipy.spatial import cKDTree

from ..errors import UserError
from .datasets import IMAGE_SUFFIXES, VAL_FRACTION, Draw, cached_tensors, draw_background, hash_fraction, what_is


@dataclass(frozen=True)
class CrowdData:
    train_x: torch.Tensor  # uint8, N x 3 x S x S
    train_density: torch.Tensor  # float32, N x 1 x S x S; each map sums to its image's head count
    val_x: torch.Tensor
    val_density: torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# Density maps
# ---------------------------------------------------------------------------------------------------------

BETA = 0.3  # MCNN's geometry-adaptive factor: sigma = beta x mean distance to the k nearest heads
NEIGHBOURS = 3
LONE_SIGMA = 4.0  # pixels, for a head with no neighbour to measure its size by
MIN_SIGMA = 0.5  # pixels: keeps coincident heads (distance 0) from a zero-width kernel


def adaptive_sigmas(points: np.ndarray, *, beta: float = BETA, k: int = NEIGHBOURS,
                    lone_sigma: float = LONE_SIGMA) -> np.ndarray:
    """Per head, beta times its mean distance to its k nearest neighbours (fewer when there are fewer).

    Under perspective, heads far away are both smaller and closer together, so the spacing of the
    neighbours estimates each head's size where no size is annotated (Zhang et al., MCNN, CVPR 2016).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) < 2:
        return np.full(len(points), float(lone_sigma))
    k = min(k, len(points) - 1)
    distances, _ = cKDTree(points).query(points, k=k + 1)  # column 0 is the head itself
    return beta * distances[:, 1:].mean(axis=1)


def density_map(points: np.ndarray, *, height: int, width: int, beta: float = BETA, k: int = NEIGHBOURS,
                lone_sigma: float = LONE_SIGMA) -> torch.Tensor:
    """1 x height x width float32 map of geometry-adaptive Gaussians at `points` ((x, y) in pixels, pixel i
    spanning [i, i + 1)), summing to len(points).

    Each Gaussian is separable and sampled at pixel centres, and each of its two 1-D factors is normalised
    over the image's pixels, so a kernel clipped by the border keeps its full mass inside (the count stays
    exact) and a narrow one is not lost between pixel centres. Heads outside the image are moved onto its
    border: annotations a pixel off the edge are common in real data.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return torch.zeros(1, height, width)
    points = np.clip(points, 0, [width, height])
    sigma = torch.from_numpy(np.maximum(adaptive_sigmas(points, beta=beta, k=k, lone_sigma=lone_sigma), MIN_SIGMA))
    xs = torch.from_numpy(points[:, 0])
    ys = torch.from_numpy(points[:, 1])
    across = _normalised_gaussians(xs, sigma, width)  # N x width
    down = _normalised_gaussians(ys, sigma, height)  # N x height
    return (down.T @ across).float().unsqueeze(0)


def _normalised_gaussians(centres: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """N x size: a 1-D Gaussian per centre at the pixel centres 0.5, 1.5, ..., each row summing to 1."""
    axis = torch.arange(size, dtype=torch.float64) + 0.5
    g = torch.exp(-0.5 * ((axis - centres[:, None]) / sigma[:, None]) ** 2)
    return g / g.sum(dim=1, keepdim=True)


def resize_density(density: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nonnegative N x 1 x H x W maps at `size`, each keeping its sum (its count): area-averaged, then
    rescaled by its sum before over its sum after, which is the sum-pooling factor H W / (h w) when the
    sides divide and corrects the uneven windows when they do not."""
    if tuple(density.shape[-2:]) == tuple(size):
        return density
    resized = F.interpolate(density, size=tuple(size), mode="area")
    before = density.sum(dim=(-2, -1), keepdim=True)
    after = resized.sum(dim=(-2, -1), keepdim=True)
    return resized * (before / after.clamp_min(torch.finfo(after.dtype).tiny))  # an empty map stays empty


# ---------------------------------------------------------------------------------------------------------
# The generated default: crowds of person-like figures under perspective
# ---------------------------------------------------------------------------------------------------------

GENERATOR_VERSION = 1  # bump with any change to the drawing or density code: it keys the disk cache
HEAD_NEAR = (0.045, 0.065)  # head radius at the bottom edge, as a fraction of the side (per image)
FAR_RATIO = (0.25, 0.6)  # head radius at the top edge over that at the bottom: the perspective's strength
BODY = (1.25, 2.0, 2.7)  # body ellipse's half-width, half-height and drop below the head, in head radii


@dataclass(frozen=True)
class CrowdSpec:
    """Parameters of the generated set; equal specs give bit-identical sets."""

    seed: int = 0
    train_size: int = 800
    val_size: int = 200
    resolution: int = 64
    max_count: int = 60  # heads per image, log-uniform in 1..max_count: sparse and packed scenes alike
    clusters: int = 3  # at most this many groups per image hold most of its heads
    noise: float = 0.03  # std of the per-pixel Gaussian noise, on the 0..1 scale

    def key(self) -> str:
        """Hash of the parameters and the drawing code's version: it keys the disk cache."""
        described = {**asdict(self), "generator": GENERATOR_VERSION, "beta": BETA, "neighbours": NEIGHBOURS,
                     "lone_sigma": LONE_SIGMA}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Crowd:
    """Rendered images with what was drawn: per image its head centres (K x 2, (x, y) in pixels, far ones
    first) and head radii (K)."""

    images: torch.Tensor  # uint8, N x 3 x S x S
    points: tuple[torch.Tensor, ...]
    radii: tuple[torch.Tensor, ...]


def render(n: int, spec: CrowdSpec, gen: torch.Generator) -> Crowd:
    """`n` crowd images drawn from `gen`: a textured background, figures placed by `_place`, drawn far to
    near so nearer figures hide farther ones, at twice the side and box-filtered down (anti-aliased), plus
    pixel noise."""
    canvases = _textured_background(n, 2 * spec.resolution, gen)
    points, radii = [], []
    for canvas in canvases:
        heads, r = _place(spec, gen)
        canvas.copy_(_draw_figures(canvas, 2 * heads, 2 * r, gen))
        points.append(heads)
        radii.append(r)
    images = F.avg_pool2d(canvases, 2)
    images = images + spec.noise * torch.randn(images.shape, generator=gen)
    images = (images.clamp_(0, 1) * 255).round_().to(torch.uint8)
    return Crowd(images, tuple(points), tuple(radii))


def _uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape or (1,), generator=gen)


def _textured_background(n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    """The classification set's background (smooth colour field and strokes) under a multi-scale value-noise
    texture (pavement, grass, crowd-like mottling), so that no flat background gives the figures away."""
    image = draw_background(Draw(n, gen), side, strokes=4)
    strength = _uniform(gen, 0.1, 0.4, n, 1, 1, 1)
    texture = torch.zeros(n, 1, side, side)
    for cells, weight in ((4, 0.5), (12, 0.3), (side // 4, 0.2)):
        field = torch.rand(n, 1, cells, cells, generator=gen)
        texture += weight * (F.interpolate(field, size=(side, side), mode="bilinear", align_corners=False) - 0.5)
    return (image + strength * texture).clamp_(0, 1)


def _place(spec: CrowdSpec, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's heads (K x 2, sorted far to near, i.e. by y) and radii (K).

    The radius grows linearly from the top edge to the bottom one (a camera looking down on a ground plane),
    jittered by +-15% per figure. From 30% to 90% of the heads gather in a few clusters whose spread scales
    with the local radius (a group far away is small in the image too); the rest scatter uniformly.
    """
    side = spec.resolution
    count = int(math.exp(_uniform(gen, 0, math.log(spec.max_count + 1)).item()))
    near = _uniform(gen, *HEAD_NEAR).item() * side
    far = near * _uniform(gen, *FAR_RATIO).item()

    def radius(y: torch.Tensor) -> torch.Tensor:
        return far + (near - far) * y / side

    grouped = round(count * _uniform(gen, 0.3, 0.9).item())
    groups = int(torch.randint(1, spec.clusters + 1, (1,), generator=gen))
    centres = torch.rand(groups, 2, generator=gen) * side
    spread = radius(centres[:, 1]) * _uniform(gen, 1.5, 4.0, groups)
    member = torch.randint(0, groups, (grouped,), generator=gen)
    clustered = centres[member] + torch.randn(grouped, 2, generator=gen) * spread[member, None]
    scattered = torch.rand(count - grouped, 2, generator=gen) * side
    heads = torch.cat([clustered, scattered]).clamp_(0, side)
    radii = radius(heads[:, 1]) * _uniform(gen, 0.85, 1.15, count)
    order = torch.argsort(heads[:, 1], stable=True)
    return heads[order], radii[order]


def _draw_figures(canvas: torch.Tensor, heads: torch.Tensor, radii: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    """`canvas` (3 x S x S) with a figure per head, a disc over a body ellipse. Every pixel takes the colour
    of the nearest figure covering it (the last in the far-to-near order), found for all figures at once."""
    n, side = len(heads), canvas.shape[-1]
    if n == 0:
        return canvas
    hair = torch.rand(n, 3, generator=gen) * 0.45  # heads seen over a crowd are mostly hair: dark
    clothes = torch.rand(n, 3, generator=gen)
    axis = torch.arange(side, dtype=torch.float32) + 0.5
    y, x = axis.view(1, side, 1), axis.view(1, 1, side)
    hx, hy, r = heads[:, 0].view(n, 1, 1), heads[:, 1].view(n, 1, 1), radii.view(n, 1, 1)
    head = (x - hx) ** 2 + (y - hy) ** 2 < r ** 2
    half_width, half_height, drop = BODY
    body = ((x - hx) / (half_width * r)) ** 2 + ((y - hy - drop * r) / (half_height * r)) ** 2 < 1
    front = torch.where(head | body, torch.arange(n).view(n, 1, 1), -1).amax(dim=0)  # S x S, -1: no figure
    nearest = front.clamp(min=0)
    its_head = head.gather(0, nearest.unsqueeze(0)).squeeze(0)
    colour = torch.where(its_head.unsqueeze(-1), hair[nearest], clothes[nearest]).permute(2, 0, 1)
    return torch.where(front >= 0, colour, canvas)


def _split(size: int, spec: CrowdSpec, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + stream)
    images, maps = [], []
    for start in range(0, size, 100):
        crowd = render(min(100, size - start), spec, gen)
        images.append(crowd.images)
        maps += [density_map(p.numpy(), height=spec.resolution, width=spec.resolution) for p in crowd.points]
    side = spec.resolution
    return (torch.cat(images) if images else torch.empty(0, 3, side, side, dtype=torch.uint8),
            torch.stack(maps) if maps else torch.empty(0, 1, side, side))


_GENERATED: dict[CrowdSpec, CrowdData] = {}


def generate(spec: CrowdSpec = CrowdSpec()) -> CrowdData:
    """The generated set for `spec`: from memory, else from ~/.cache/nasplat, else rendered (about 8 s, which
    every search process and retraining would pay again)."""
    if spec not in _GENERATED:
        def render() -> dict[str, torch.Tensor]:
            train_x, train_d = _split(spec.train_size, spec, stream=0)
            val_x, val_d = _split(spec.val_size, spec, stream=1)
            return {"train_x": train_x, "train_density": train_d, "val_x": val_x, "val_density": val_d}

        _GENERATED[spec] = CrowdData(**cached_tensors(f"crowds-{spec.key()}", render))
    return _GENERATED[spec]


# ---------------------------------------------------------------------------------------------------------
# Sources: "synthetic", "shanghaitech:PATH"
# ---------------------------------------------------------------------------------------------------------

SHANGHAITECH_EXPECTED = ("expected PATH/images/IMG_n.jpg with PATH/ground_truth/GT_IMG_n.mat, or PATH/train_data/ "
                         "and PATH/test_data/ laid out so (ShanghaiTech part A or B)")
MAT_EXPECTED = "expected ShanghaiTech's image_info[0,0][0,0][0]: an N x 2 array of (x, y) head locations"


class CrowdSource(ABC):
    """A named data source; `resolution` is the side its images and maps are stored at."""

    resolution: int

    @abstractmethod
    def load(self) -> CrowdData: ...


class SyntheticCrowdSource(CrowdSource):
    def __init__(self, spec: CrowdSpec):
        self.spec = spec
        self.resolution = spec.resolution

    def load(self) -> CrowdData:
        return generate(self.spec)


class ShanghaiTechSource(CrowdSource):
    """ShanghaiTech part A / B (or a folder laid out like them): `train_data/` and `test_data/` become the
    training and validation splits; a single `images/` + `ground_truth/` folder is split by a hash of each
    file name (a fifth to validation). Images are resized to a square of side `resolution`, aspect not kept,
    so that every head stays in the picture; each density map is made at the image's own size, where the
    annotations were made, then resized keeping its count."""

    def __init__(self, text: str, path: Path, resolution: int):
        self.text = text
        self.resolution = resolution
        if not path.is_dir():
            raise UserError(f"{text}: {path} {what_is(path)} ({SHANGHAITECH_EXPECTED})")
        if (path / "train_data").is_dir() and (path / "test_data").is_dir():
            self.train = _annotated_images(text, path / "train_data")
            self.val = _annotated_images(text, path / "test_data")
        else:
            pairs = _annotated_images(text, path)
            in_val = [hash_fraction(image.name) < VAL_FRACTION for image, _ in pairs]
            self.train = [p for p, v in zip(pairs, in_val) if not v]
            self.val = [p for p, v in zip(pairs, in_val) if v]
            if not self.train or not self.val:
                raise UserError(f"{text}: the hash split of {len(pairs)} images in {path} left a split empty; "
                                f"give more images or separate train_data/ and test_data/ folders")

    def load(self) -> CrowdData:
        train_x, train_d = self._read(self.train)
        val_x, val_d = self._read(self.val)
        return CrowdData(train_x, train_d, val_x, val_d)

    def _read(self, pairs: list[tuple[Path, Path]]) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        side = self.resolution
        images = torch.empty(len(pairs), 3, side, side, dtype=torch.uint8)
        maps = torch.empty(len(pairs), 1, side, side)
        for i, (image_path, mat_path) in enumerate(pairs):
            points = read_points(mat_path)
            try:
                with Image.open(image_path) as image:
                    width, height = image.size
                    rgb = image.convert("RGB").resize((side, side), resample=Image.Resampling.BILINEAR)
            except (OSError, UnidentifiedImageError) as error:
                raise UserError(f"{self.text}: cannot read image {image_path} ({error})") from None
            pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            images[i] = pixels.view(side, side, 3).permute(2, 0, 1)
            density = density_map(points, height=height, width=width)
            maps[i] = resize_density(density.unsqueeze(0), (side, side))[0]
        return images, maps


def read_points(path: Path) -> np.ndarray:
    """The N x 2 (x, y) head locations of a ShanghaiTech ground-truth file, image_info[0,0][0,0][0]."""
    try:
        content = loadmat(path)
    except NotImplementedError:  # scipy's answer to a MATLAB v7.3 (HDF5) file
        raise UserError(f"{path} is a MATLAB v7.3 file, which scipy cannot read; save it with -v7 "
                        f"({MAT_EXPECTED})") from None
    except (OSError, ValueError, TypeError, IndexError, MatReadError) as error:
        raise UserError(f"cannot read {path} as a .mat file ({MAT_EXPECTED}; {type(error).__name__}: {error})") \
            from None
    try:
        points = np.asarray(content["image_info"][0, 0][0, 0][0], dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        fields = sorted(k for k in content if not k.startswith("__"))
        raise UserError(f"{path} has no image_info[0,0][0,0][0] ({MAT_EXPECTED}; found variables "
                        f"{', '.join(fields) or 'none'})") from None
    if points.size == 0:
        return np.zeros((0, 2))
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise UserError(f"{path}: image_info[0,0][0,0][0] has shape {points.shape} or non-finite values "
                        f"({MAT_EXPECTED})")
    return points


def _annotated_images(text: str, root: Path) -> list[tuple[Path, Path]]:
    """(image, its .mat) for every image in root/images, each required to have root/ground_truth/GT_<stem>.mat."""
    images, truth = root / "images", root / "ground_truth"
    for folder in (images, truth):
        if not folder.is_dir():
            raise UserError(f"{text}: {folder} {what_is(folder)} ({SHANGHAITECH_EXPECTED})")
    files = sorted(f for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise UserError(f"{text}: no images in {images} ({SHANGHAITECH_EXPECTED})")
    pairs = []
    for image in files:
        mat = truth / f"GT_{image.stem}.mat"
        if not mat.is_file():
            raise UserError(f"{text}: image {image} has no annotation {mat} ({SHANGHAITECH_EXPECTED})")
        pairs.append((image, mat))
    return pairs


def open_crowd_source(data: str, *, resolution: int | None = None) -> CrowdSource:
    """Parses a data name and checks its location; `resolution` is the side images and maps are stored at
    (default 64: a CPU proxy; the counting target configuration is 512)."""
    kind, _, location = data.partition(":")
    side = resolution or 64
    if kind == "synthetic" and not location:
        return SyntheticCrowdSource(CrowdSpec(resolution=side))
    if kind == "shanghaitech" and location:
        return ShanghaiTechSource(data, Path(location).expanduser(), side)
    raise UserError(f"unknown crowd data source {data!r}; expected 'synthetic' or 'shanghaitech:PATH'")
