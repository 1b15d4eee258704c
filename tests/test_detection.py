"""The detection task: generated shapes with tight boxes, the COCO loader on a fixture written here, target
assignment, losses, NMS, COCO mAP by pycocotools, the TorchScript detector, and a small detector that learns."""
from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from nasplat.tasks import detection_data
from nasplat.tasks.detection import (DetectionTask, Detector, assign, box_iou, coco_map, detection_loss, locations,
                                     nms, postprocess)
from nasplat.tasks.detection_data import CLASSES, DetectionSpec, render

K = len(CLASSES)
SHAPES = [(8, 8), (4, 4), (2, 2)]  # the levels of a 64 px input at strides 8, 16, 32


@pytest.fixture(scope="module")
def drawn():
    return render(64, DetectionSpec(resolution=64), torch.Generator().manual_seed(1))


def test_generated_set_is_seeded_and_boxes_are_tight_around_what_was_drawn(drawn):
    images, boxes = drawn
    again = render(64, DetectionSpec(resolution=64), torch.Generator().manual_seed(1))
    assert torch.equal(images, again[0]) and torch.equal(boxes, again[1])
    assert images.dtype == torch.uint8 and boxes.shape == (64, DetectionSpec.max_objects, 5)
    valid = boxes[..., 4] >= 0
    assert (boxes[~valid][:, 4] == -1).all() and valid.any(dim=1).all()  # every image shows an object
    b = boxes[valid]
    assert ((b[:, :4] >= 0) & (b[:, :4] <= 1)).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert set(b[:, 4].long().tolist()) == set(range(K))
    sides = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    assert sides.min() < 0.15 and sides.max() > 0.45  # small and large objects alike
    aspect = (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])
    assert aspect.min() < 0.7 and aspect.max() > 1.4


def test_a_lone_shape_fills_its_box_and_nothing_outside_it_changed():
    """Draw one object over a flat background: every changed pixel lies in its box, and each border row and
    column of the box holds one."""
    spec = DetectionSpec(resolution=48, max_objects=1, noise=0.0)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    images, boxes = render(8, spec, gen)
    gen.set_state(state)
    background = detection_data.draw_background(detection_data.Draw(8, gen), 48, strokes=6)
    changed = ((images.float() / 255 - background).abs() > 1 / 255 + 1e-6).any(dim=1)  # N x S x S
    for i in range(8):
        x1, y1, x2, y2 = (round(float(v) * 48) for v in boxes[i, 0, :4])
        inside = torch.zeros(48, 48, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert not (changed[i] & ~inside).any()
        region = changed[i, y1:y2, x1:x2]
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def _write_coco(root, name: str, images: list[tuple[int, int]], annotations: list[dict]) -> None:
    from PIL import Image

    (root / name).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    for i, (w, h) in enumerate(images):
        Image.new("RGB", (w, h), (40 * i, 100, 200)).save(root / name / f"{i}.png")
    (root / "annotations" / f"instances_{name}.json").write_text(json.dumps({
        "images": [{"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(images)],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}))


def test_coco_loader_normalises_boxes_maps_categories_and_skips_crowds(tmp_path):
    _write_coco(tmp_path, "train2017", [(100, 50), (40, 40)], [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 30, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 100, 50], "iscrowd": 1},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [20, 20, 10, 10], "iscrowd": 0}])
    _write_coco(tmp_path, "val2017", [(64, 64)], [
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 32, 64], "iscrowd": 0}])
    source = detection_data.open_detection_source(f"coco:{tmp_path}", resolution=32)
    assert source.classes == ("dog", "cat")  # in the order of their ids: 3, then 7
    data = source.load()
    assert data.train_x.shape == (2, 3, 32, 32) and data.val_x.shape == (1, 3, 32, 32)
    assert data.train_boxes.shape[1] == data.val_boxes.shape[1] == 1  # the crowd annotation is gone
    torch.testing.assert_close(data.train_boxes[0, 0], torch.tensor([0.1, 0.1, 0.4, 0.5, 1.0]))
    torch.testing.assert_close(data.train_boxes[1, 0], torch.tensor([0.5, 0.5, 0.75, 0.75, 0.0]))
    torch.testing.assert_close(data.val_boxes[0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert DetectionTask(data=f"coco:{tmp_path}", base_resolution=32).num_classes == 2


def test_coco_loader_refuses_missing_parts_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        detection_data.open_detection_source(f"coco:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="instances_train"):
        detection_data.open_detection_source(f"coco:{tmp_path}")
    _write_coco(tmp_path, "train", [(8, 8)], [])
    _write_coco(tmp_path, "val", [(8, 8)], [])
    (tmp_path / "val" / "0.png").unlink()
    with pytest.raises(ValueError, match="0.png"):
        detection_data.open_detection_source(f"coco:{tmp_path}").load()
    with pytest.raises(ValueError, match="synthetic or coco:PATH"):
        DetectionTask(data="voc:/x")
    with pytest.raises(ValueError, match="nms_iou"):
        DetectionTask(nms_iou=1.5)


def _ideal_output(boxes: torch.Tensor) -> list[torch.Tensor]:
    """The levels a perfect detector would output for `boxes`: confident classes and exact distances at the
    assigned locations, background elsewhere."""
    levels = []
    for (h, w), (cls, target) in zip(SHAPES, assign(boxes, SHAPES)):
        points = locations(h, w)
        out = torch.full((len(boxes), h * w, K + 5), -10.0)
        positive = cls >= 0
        out[..., :K][positive] = torch.where(nn.functional.one_hot(cls[positive], K) > 0, 10.0, -10.0)
        distance = torch.cat([points - target[..., :2], target[..., 2:] - points], dim=-1) * w
        out[..., K:K + 4] = distance.clamp_min(1e-6).log()
        out[..., K + 4] = 10.0
        levels.append(out.transpose(1, 2).reshape(len(boxes), K + 5, h, w))
    return levels


def test_every_object_gets_a_positive_location_on_the_level_of_its_size_even_tiny_ones():
    boxes = torch.full((1, 5, 5), -1.0)
    boxes[0, 0] = torch.tensor([0.50, 0.50, 0.52, 0.52, 0])  # about a pixel at 64 px
    boxes[0, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0, 1])  # the whole image
    boxes[0, 2] = torch.tensor([0.1, 0.6, 0.3, 0.8, 2])  # half side 0.1: under 2 cells of 1/8
    boxes[0, 3] = torch.tensor([0.2, 0.2, 0.8, 0.7, 3])  # half side 0.3: 2.4 cells of 1/8, 1.2 of 1/4
    classes = [set(cls[0][cls[0] >= 0].tolist()) for cls, _ in assign(boxes, SHAPES)]
    assert classes == [{0, 2}, {1, 3}, set()]  # at 64 px the coarsest level's cells are half the image
    at_512 = [set(cls[0][cls[0] >= 0].tolist()) for cls, _ in assign(boxes, [(64, 64), (32, 32), (16, 16)])]
    assert at_512 == [{0}, set(), {1, 2, 3}]
    # the tiny box holds no location centre at all: it still gets the location nearest its centre
    cls, _ = assign(boxes[:, :1], SHAPES)[0]
    assert (cls[0] >= 0).sum() == 1


def test_decoding_the_ideal_output_gives_back_the_boxes_and_the_loss_prefers_it(drawn):
    _, boxes = drawn
    ideal = _ideal_output(boxes)
    b, s, c = postprocess(ideal, K, 64, 64, 0.05, 0.6, 100)
    mean_ap, ap50 = coco_map(b, s, c, boxes, side=64, classes=K)
    assert ap50 > 95 and mean_ap > 85  # a few objects hidden under smaller ones lose their only location
    noisy = [level + 2 * torch.randn(level.shape, generator=torch.Generator().manual_seed(0)) for level in ideal]
    assert detection_loss(ideal, boxes, K) < detection_loss(noisy, boxes, K)


def test_coco_map_is_100_for_the_truth_less_for_shifted_boxes_and_0_without_detections(drawn):
    _, truth = drawn
    valid = truth[..., 4] >= 0
    boxes, labels = truth[..., :4] * 64, torch.where(valid, truth[..., 4], -1).long()
    scores = valid.float()
    assert coco_map(boxes, scores, labels, truth, side=64, classes=K) == pytest.approx((100.0, 100.0))
    shifted = coco_map(boxes + 3, scores, labels, truth, side=64, classes=K)
    assert 0 < shifted[0] < 90
    wrong_class = coco_map(boxes, scores, torch.where(valid, (labels + 1) % K, -1), truth, side=64, classes=K)
    assert wrong_class[1] < 1  # a box relabelled matches only where it happens to cover an object of that class
    none = torch.full_like(labels, -1)
    assert coco_map(boxes, scores, none, truth, side=64, classes=K) == (0.0, 0.0)


def _brute_nms(boxes, scores, labels, iou):
    kept = []
    for i in sorted(range(len(boxes)), key=lambda i: -float(scores[i])):
        if all(labels[i] != labels[j] or box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= iou for j in kept):
            kept.append(i)
    return kept


def test_nms_drops_same_class_overlaps_keeps_other_classes_and_matches_brute_force():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    assert nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    rng = random.Random(0)
    for _ in range(5):
        xy = torch.tensor([[rng.uniform(0, 50), rng.uniform(0, 50)] for _ in range(40)])
        wh = torch.tensor([[rng.uniform(5, 30), rng.uniform(5, 30)] for _ in range(40)])
        b = torch.cat([xy, xy + wh], dim=1)
        s, c = torch.rand(40, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (40,))
        assert nms(b, s, c, 0.4).tolist() == _brute_nms(b, s, c, 0.4)


class TinyDetector(nn.Module):
    """Three strided convolutions and one predictor shared by the three levels (strides 8, 16, 32)."""

    def __init__(self, classes: int, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
                                  for _ in range(2))
        self.predictor = nn.Conv2d(width, classes + 5, 3, padding=1)

    def forward(self, x):
        levels = [self.stem(x)]
        for down in self.down:
            levels.append(down(levels[-1]))
        return tuple(self.predictor(level) for level in levels)


def test_a_small_detector_learns_on_the_generated_shapes():
    task = DetectionTask(base_resolution=64, limit_train=400, limit_val=100, lr=5e-3)
    model = TinyDetector(task.num_classes)
    history = []
    task.train_eval(model, input_size=64, epochs=8, seed=0, on_epoch=lambda e, m: history.append(m))
    assert set(history[-1]) >= {"map", "map50", "accuracy", "loss"}
    assert history[-1]["accuracy"] == history[-1]["map"]
    assert history[-1]["map50"] > 3 * history[0]["map50"] > 0  # still low in absolute terms after 8 short epochs
    assert history[-1]["loss"] < history[0]["loss"]


def test_the_scripted_detector_gives_the_eager_detections():
    torch.manual_seed(0)
    network = TinyDetector(K).eval()
    with torch.no_grad():
        network.predictor.bias[:K] = 1.0  # confident enough that many candidates pass the threshold
    x = torch.randn(2, 3, 64, 64)
    eager = Detector(network, classes=K, max_detections=20)
    with torch.no_grad():
        scripted = torch.jit.script(Detector(torch.jit.trace(network, x), classes=K, max_detections=20))
        expected, got = eager(x), scripted(x)
    assert (expected[2] >= 0).sum() > 10
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)
    assert expected[0].shape == (2, 20, 4) and (expected[0][..., 2:] <= 64).all()
