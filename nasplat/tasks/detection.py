"""Object-detection proxy: an anchor-free one-stage detector (FCOS, Tian et al., ICCV 2019) trained for a few
epochs and scored by COCO mAP (pycocotools).

Hit-Detector itself searched Faster R-CNN's parts; a one-stage, anchor-free detector keeps its three searched
components (backbone, neck, head) and needs neither anchors nor RoI pooling, which on CPU proxies would cost
more than the networks being compared. The model contract: `model(x)` returns one tensor per pyramid level,
finest first, each level's stride twice the previous one, N x (K + 5) x h x w: K class logits, 4 box
distances (left, top, right, bottom) and a centerness logit per location. Location (i, j) sits at
((j + 0.5) / w, (i + 0.5) / h) in coordinates normalised to the image, and its distances decode as
exp(raw) cells of 1 / w (so the same output means the same box at any input size).

Targets (`assign`): an object goes to one level by its size, the finest on which its half longer side spans
fewer than 2 cells (the coarsest for anything larger). FCOS's ranges also double per level but are absolute
(up to 64 px on its finest level, stride 8): on 64 px proxy images that puts every object on the finest
level and leaves the coarser ones nothing to learn. On the generated set at 64 px, 20 epochs of the FPN
baseline reached mAP 3.1 with this rule and 2.6 with FCOS's (ad-hoc runs, one seed). There, the locations inside its box
and within 1.5 cells of its centre are positive, and so is the location nearest its centre, so that no
object, however small, goes without one. A location claimed by several objects takes the smallest. Losses:
sigmoid focal loss (alpha 0.25, gamma 2) over all locations, GIoU over positives weighted by their
centerness target, and BCE of the centerness, each normalised by the number of positives.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_task
from . import detection_data
from .image_task import ImageTask, subset

CENTRE_RADIUS = 1.5  # cells around an object's centre whose locations may be positive (FCOS centre sampling)
RANGE = 2.0  # an object's half longer side, in cells of its level, stays below this (see the module docstring)


def locations(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h w) x 2 normalised (x, y) centres of a level's locations, row by row."""
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def object_levels(boxes: torch.Tensor, sides: list[int]) -> torch.Tensor:
    """The level (index into `sides`, the levels' widths, finest first) each box (..., 4) is assigned to."""
    half = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) / 2
    finest_cell = 1.0 / sides[0]
    level = torch.ceil(torch.log2((half / (RANGE * finest_cell)).clamp_min(1e-6)))
    return level.clamp(0, len(sides) - 1).long()


def assign(boxes: torch.Tensor, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level, (class target B x P: class index or -1 for background, box target B x P x 4 in normalised
    coordinates) for padded `boxes` B x M x 5 and the levels' (h, w)."""
    valid = boxes[..., 4] >= 0  # B x M
    level_of = object_levels(boxes[..., :4], [w for _, w in shapes])
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    centre = (boxes[..., :2] + boxes[..., 2:4]) / 2  # B x M x 2
    out = []
    for index, (h, w) in enumerate(shapes):
        points = locations(h, w, boxes.device)  # P x 2
        cell = torch.tensor([1.0 / w, 1.0 / h], device=boxes.device)
        p = points.view(1, -1, 1, 2)
        b = boxes[:, None, :, :4]  # B x 1 x M x 4
        inside = (p[..., 0] > b[..., 0]) & (p[..., 0] < b[..., 2]) & (p[..., 1] > b[..., 1]) & (p[..., 1] < b[..., 3])
        near = ((p - centre[:, None]).abs() <= CENTRE_RADIUS * cell).all(dim=-1)  # B x P x M
        nearest = torch.zeros_like(inside)
        grid = (centre / cell).floor().long()  # the cell holding each centre
        column = grid[..., 0].clamp(0, w - 1)
        row = grid[..., 1].clamp(0, h - 1)
        nearest.scatter_(1, (row * w + column)[:, None, :], True)
        ours = (valid & (level_of == index))[:, None, :]  # B x 1 x M
        positive = ours & ((inside & near) | nearest)
        claimed = torch.where(positive, area[:, None, :], torch.full_like(area[:, None, :], math.inf))
        best_area, best = claimed.min(dim=2)  # B x P
        cls = torch.where(torch.isfinite(best_area), boxes[..., 4].gather(1, best).long(), -1)
        target = boxes[..., :4].gather(1, best[..., None].expand(-1, -1, 4))
        out.append((cls, target))
    return out


def _flat(level: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> N x (h w) x C, locations row by row as `locations` gives them."""
    return level.flatten(2).transpose(1, 2)


def decode_boxes(raw: torch.Tensor, points: torch.Tensor, w: int) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2), normalised, from raw distances ... x 4 at `points` ... x 2 of a level w wide."""
    distance = torch.exp(raw.clamp(max=8.0)) / w  # e^8 cells is far beyond any image (a literal: TorchScript)
    return torch.cat([points - distance[..., :2], points + distance[..., 2:]], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def giou_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of paired boxes ... x 4 (Rezatofighi et al., CVPR 2019)."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp_min(1e-12)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    return 1 - iou + (hull - union) / hull.clamp_min(1e-12)


def centerness(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness target: sqrt(min(l, r) / max(l, r) x min(t, b) / max(t, b)) of points in boxes."""
    l, t = points[..., 0] - boxes[..., 0], points[..., 1] - boxes[..., 1]
    r, b = boxes[..., 2] - points[..., 0], boxes[..., 3] - points[..., 1]
    l, t, r, b = (v.clamp_min(0) for v in (l, t, r, b))
    ratio = (torch.minimum(l, r) / torch.maximum(l, r).clamp_min(1e-12)) * \
        (torch.minimum(t, b) / torch.maximum(t, b).clamp_min(1e-12))
    return ratio.sqrt()


def detection_loss(output: tuple[torch.Tensor, ...] | list[torch.Tensor], boxes: torch.Tensor,
                   classes: int) -> torch.Tensor:
    """Focal + GIoU + centerness loss of a model's levels against padded normalised boxes B x M x 5."""
    _check_levels(output, classes)
    shapes = [tuple(level.shape[-2:]) for level in output]
    targets = assign(boxes, shapes)
    cls_logits, box_raw, ctr_logits, cls_t, box_t, points = [], [], [], [], [], []
    for level, (h, w), (cls, target) in zip(output, shapes, targets):
        flat = _flat(level)
        cls_logits.append(flat[..., :classes])
        box_raw.append(decode_boxes(flat[..., classes:classes + 4], locations(h, w, level.device), w))
        ctr_logits.append(flat[..., classes + 4])
        cls_t.append(cls)
        box_t.append(target)
        points.append(locations(h, w, level.device).expand(len(level), -1, -1))
    logits, predicted, ctr = torch.cat(cls_logits, 1), torch.cat(box_raw, 1), torch.cat(ctr_logits, 1)
    cls_t, box_t, points = torch.cat(cls_t, 1), torch.cat(box_t, 1), torch.cat(points, 1)
    positive = cls_t >= 0
    count = positive.sum().clamp_min(1).float()
    one_hot = F.one_hot(cls_t.clamp_min(0), classes).float() * positive[..., None]
    focal = _focal(logits, one_hot).sum() / count
    if not positive.any():
        return focal + 0.0 * (predicted.sum() + ctr.sum())  # keeps every output in the graph
    ctr_t = centerness(points[positive], box_t[positive])
    giou = (giou_loss(predicted[positive], box_t[positive]) * ctr_t).sum() / ctr_t.sum().clamp_min(1e-6)
    ctr_loss = F.binary_cross_entropy_with_logits(ctr[positive], ctr_t, reduction="sum") / count
    return focal + giou + ctr_loss


def _focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return (alpha * targets + (1 - alpha) * (1 - targets)) * (1 - p_t) ** gamma * ce


def _check_levels(output: Any, classes: int) -> None:
    if not isinstance(output, (tuple, list)) or not output or any(
            level.ndim != 4 or level.shape[1] != classes + 5 for level in output):
        shapes = [tuple(t.shape) for t in output] if isinstance(output, (tuple, list)) else type(output).__name__
        raise ValueError(f"a detection model returns one N x (K + 5) x h x w tensor per level (K = {classes} "
                         f"classes: logits, 4 box distances, centerness); got {shapes}")


# -- post-processing (TorchScript-compatible) ------------------------------------------------------------------

def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of boxes A x 4 and B x 4."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter).clamp_min(1e-12)


def _overlaps(boxes: torch.Tensor, iou: float) -> torch.Tensor:
    """Whether each pair of boxes B x 4 overlaps by more than `iou`: `box_iou > iou` without the division and
    the B x B x 2 corner tensors, in place where it can be (NMS builds a matrix of up to 1,000 x 1,000 per image)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    width = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp_min_(0)
    height = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp_min_(0)
    inter = width.mul_(height)
    area = box_area(boxes)
    union = (area[:, None] + area[None]) - inter
    return inter > union.mul_(iou)


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float, limit: int = 0
        ) -> torch.Tensor:
    """Indices kept by class-wise greedy non-maximum suppression, best score first: a box is dropped when it
    overlaps a kept box of its class by more than `iou`; with `limit` > 0, only the first `limit` kept.

    Boxes of different classes are moved apart (offset by class), so one IoU matrix serves every class. The
    loop visits kept boxes only, jumping to the next survivor, and stops at `limit`: an untrained detector
    passes all of its ~1,000 candidates, and a Python step per candidate dominated its evaluation."""
    order = scores.argsort(descending=True)
    n = order.numel()
    if n == 0:
        return order
    shifted = boxes[order] + (labels[order].to(boxes.dtype) * (boxes.max() + 1))[:, None]
    overlap = _overlaps(shifted, iou)
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    kept: list[int] = []
    i = 0
    while limit <= 0 or len(kept) < limit:
        kept.append(i)
        alive[i] = False
        alive &= ~overlap[i]
        if not bool(alive.any()):
            break
        i = int(alive.to(torch.uint8).argmax())  # the best-scored survivor
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def postprocess(levels: list[torch.Tensor], classes: int, width: int, height: int, score_threshold: float,
                nms_iou: float, max_detections: int, candidates: int = 1000
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of a batch: boxes N x D x 4 in pixels of a width x height input, scores N x D and labels
    N x D (padding: score 0, label -1), D = max_detections. Scores are sqrt(class probability x centerness),
    as FCOS ranks them."""
    flat_scores, flat_boxes = [], []
    for level in levels:
        h, w = level.shape[-2], level.shape[-1]
        flat = level.flatten(2).transpose(1, 2)
        prob = torch.sigmoid(flat[..., :classes]) * torch.sigmoid(flat[..., classes + 4:classes + 5])
        flat_scores.append(prob.sqrt())
        flat_boxes.append(decode_boxes(flat[..., classes:classes + 4], locations(h, w, level.device), w))
    scores_all, boxes_all = torch.cat(flat_scores, 1), torch.cat(flat_boxes, 1)
    scale = torch.tensor([width, height, width, height], dtype=boxes_all.dtype, device=boxes_all.device)
    n = scores_all.shape[0]
    out_boxes = torch.zeros(n, max_detections, 4, device=boxes_all.device)
    out_scores = torch.zeros(n, max_detections, device=boxes_all.device)
    out_labels = torch.full((n, max_detections), -1, dtype=torch.long, device=boxes_all.device)
    for i in range(n):
        scores = scores_all[i].flatten()
        top = scores.topk(min(candidates, scores.numel())).indices
        top = top[scores[top] > score_threshold]
        location, label = top // classes, top % classes
        boxes = (boxes_all[i, location] * scale).clamp_min(0)
        boxes = torch.minimum(boxes, scale)
        kept = nms(boxes, scores[top], label, nms_iou, max_detections)
        k = kept.numel()
        out_boxes[i, :k], out_scores[i, :k], out_labels[i, :k] = boxes[kept], scores[top][kept], label[kept]
    return out_boxes, out_scores, out_labels


class Detector(nn.Module):
    """A detection network with its decoding and NMS: x -> (boxes N x D x 4 in pixels, scores, labels).
    `torch.jit.script(Detector(torch.jit.trace(network, x), ...))` is the deployable TorchScript module."""

    def __init__(self, network: nn.Module, *, classes: int, score_threshold: float = 0.05, nms_iou: float = 0.6,
                 max_detections: int = 100):
        super().__init__()
        self.network = network
        self.classes = classes
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels: list[torch.Tensor] = []
        for level in self.network(x):
            levels.append(level)
        return postprocess(levels, self.classes, x.shape[-1], x.shape[-2], self.score_threshold, self.nms_iou,
                           self.max_detections)


# -- COCO mAP ----------------------------------------------------------------------------------------------------

def coco_map(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor, *,
             side: int, classes: int) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) in % by pycocotools' COCOeval, of detections (boxes N x D x 4 in pixels, scores,
    labels; label -1 is padding) against padded normalised ground truth N x M x 5 on images `side` pixels wide."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations = []
    for i, rows in enumerate(truth.tolist()):
        for x1, y1, x2, y2, c in rows:
            if c >= 0:
                x1, y1, x2, y2 = (v * side for v in (x1, y1, x2, y2))
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": 0})
    results = [{"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for i in range(len(truth))
               for (x1, y1, x2, y2), s, c in zip(boxes[i].tolist(), scores[i].tolist(), labels[i].tolist()) if c >= 0]
    if not annotations or not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        ground = COCO()
        ground.dataset = {"images": [{"id": i, "width": side, "height": side} for i in range(len(truth))],
                          "annotations": annotations,
                          "categories": [{"id": c, "name": str(c)} for c in range(classes)]}
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return max(0.0, 100 * float(evaluation.stats[0])), max(0.0, 100 * float(evaluation.stats[1]))


# -- the task ------------------------------------------------------------------------------------------------------

@register_task("detection")
class DetectionTask(ImageTask):
    """Anchor-free detection (see the module docstring): AdamW under a one-cycle schedule, clipped gradients.

    `data` is "synthetic" (generated shapes, the default) or "coco:PATH" (see `detection_data`).
    `base_resolution` is the proxy side at proxy_scale 1.0 and the side the data is stored at (default 128;
    the detection target configuration is 3 x 512 x 512). `score_threshold`, `nms_iou` and `max_detections`
    are the post-processing's. Metrics: "map" (COCO mAP@[.5:.95], %), "map50" (mAP@.5, %), "accuracy" = map
    for the strategies, and "loss", the validation loss.
    """

    default_epochs: ClassVar[int] = 12

    def __init__(self, *, data: str = "synthetic", base_resolution: int | None = None, batch_size: int = 32,
                 lr: float = 2e-3, weight_decay: float = 1e-4, grad_clip: float | None = 5.0,
                 score_threshold: float = 0.05, nms_iou: float = 0.6, max_detections: int = 100,
                 limit_train: int | None = None, limit_val: int | None = None, device: str = "cpu",
                 threads: int | None = None):
        if not 0 < nms_iou <= 1 or not 0 <= score_threshold < 1 or max_detections < 1:
            raise UserError(f"nms_iou must lie in (0, 1], score_threshold in [0, 1) and max_detections be at "
                            f"least 1; got {nms_iou}, {score_threshold}, {max_detections}")
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                         limit_train=limit_train, limit_val=limit_val, device=device, threads=threads)
        self.source = detection_data.open_detection_source(data, resolution=base_resolution)
        self.data_name = data
        self.base_resolution = self.source.resolution
        self.num_classes = len(self.source.classes)
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections
        self._data: detection_data.DetectionData | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.data_name, "classes": list(self.source.classes),
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "grad_clip": self.grad_clip, "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
                "max_detections": self.max_detections, "limit_train": self.limit_train, "limit_val": self.limit_val}

    def data(self) -> detection_data.DetectionData:
        if self._data is None:
            full = self.source.load()
            self._data = detection_data.DetectionData(*subset(full.train_x, full.train_boxes, self.limit_train),
                                                      *subset(full.val_x, full.val_boxes, self.limit_val),
                                                      full.classes)
        return self._data

    def splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        data = self.data()
        return data.train_x, data.train_boxes, data.val_x, data.val_boxes

    def training_loss(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> torch.Tensor:
        return self.loss(model(x), t)

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return detection_loss(output, target, self.num_classes)

    def detector(self, network: nn.Module) -> Detector:
        """`network` with this task's decoding and NMS."""
        return Detector(network, classes=self.num_classes, score_threshold=self.score_threshold,
                        nms_iou=self.nms_iou, max_detections=self.max_detections)

    def _evaluate(self, model: nn.Module, val_x: torch.Tensor, val_t: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> dict[str, float]:
        model.eval()
        boxes, scores, labels, loss = [], [], [], 0.0
        for i in range(0, len(val_x), self.batch_size):
            x = self._prepare(val_x[i:i + self.batch_size], mean, std)
            target = val_t[i:i + self.batch_size].to(self.device)
            with torch.no_grad():
                levels = list(model(x))
                loss += self.loss(levels, target).item() * len(target)
                b, s, c = postprocess(levels, self.num_classes, x.shape[-1], x.shape[-2], self.score_threshold,
                                      self.nms_iou, self.max_detections)
            boxes.append(b.cpu())
            scores.append(s.cpu())
            labels.append(c.cpu())
        mean_ap, ap50 = coco_map(torch.cat(boxes), torch.cat(scores), torch.cat(labels), val_t.cpu(),
                                 side=val_x.shape[-1], classes=self.num_classes)
        if not math.isfinite(loss):
            raise FloatingPointError("evaluation diverged: the validation loss is not finite")
        return {"accuracy": mean_ap, "map": mean_ap, "map50": ap50, "loss": loss / len(val_x)}
