"""MTCNN (Zhang et al. 2016) on torch: the P-, R- and O-net cascade and the O-net follower.

Loaded only when ``mtcnn`` is asked for (``proxytasks.detect.create_detector``), so that
ingest with another detector never imports torch.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .detect_base import Detections, Detector, clip_boxes
from .errors import ProxytasksError


class _PNet(nn.Module):
    """MTCNN proposal net; parameter names match facenet-pytorch's state dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class _RNet(nn.Module):
    """MTCNN refinement net (24x24 crops)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(len(x), -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class _ONet(nn.Module):
    """MTCNN output net (48x48 crops): box, 5 landmarks, score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(len(x), -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _load_mtcnn_nets(device: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three nets with facenet-pytorch's bundled weights (plain state dicts).

    The package is located, not imported: its ``__init__`` pulls in ``requests``.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ProxytasksError("the MTCNN detector needs facenet-pytorch (its weights ship in "
                              "the wheel): pip install --no-deps facenet-pytorch==2.6.0; or "
                              "use --detector haar")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    nets = []
    for cls, file in ((_PNet, "pnet.pt"), (_RNet, "rnet.pt"), (_ONet, "onet.pt")):
        net = cls()
        try:
            state = torch.load(data / file, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ProxytasksError(f"MTCNN weights {data / file} cannot be loaded ({exc}); "
                                  f"reinstall: pip install --no-deps --force-reinstall "
                                  f"facenet-pytorch==2.6.0") from None
        nets.append(net.eval().to(device))
    return nets[0], nets[1], nets[2]


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS with overlap = intersection / smaller area (MTCNN's final 'Min' step)."""
    order = torch.argsort(scores, descending=True)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep: list[int] = []
    while order.numel():
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(boxes[i, 2], boxes[rest, 2])
             - torch.maximum(boxes[i, 0], boxes[rest, 0]) + 1).clamp(min=0)
        h = (torch.minimum(boxes[i, 3], boxes[rest, 3])
             - torch.maximum(boxes[i, 1], boxes[rest, 1]) + 1).clamp(min=0)
        overlap = w * h / torch.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow ``[x1, y1, x2, y2, ...]`` boxes to squares around their centres."""
    boxes = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    boxes = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _crops(batch: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops resized to ``size``; parts outside the image read as zero (padding)."""
    # MTCNN boxes are inclusive pixel coordinates, 1-based at the left edge.
    rois = torch.cat([inds[:, None].to(batch.dtype), boxes[:, 0:1] - 1, boxes[:, 1:2] - 1,
                      boxes[:, 2:3], boxes[:, 3:4]], dim=1)
    crops = roi_align(batch, rois, output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)
    return (crops - 127.5) * 0.0078125


class MTCNNDetector(Detector):
    """MTCNN (Zhang et al. 2016): P-, R- and O-net cascade with NMS and 5 landmarks.

    Uses facenet-pytorch's networks and bundled weights; the cascade is written here
    (batched over same-size images, zero-padded crops). ``threshold`` is the ONet score.
    """

    name = "mtcnn"
    default_threshold = 0.9

    def __init__(self, min_face: int = 20, threshold: float | None = None, device: str = "cpu",
                 stage_thresholds: tuple[float, float] = (0.6, 0.7), factor: float = 0.709,
                 batch_size: int = 16, **kw: Any) -> None:
        super().__init__(min_face=min_face, threshold=threshold, device=device, **kw)
        self.stage_thresholds = tuple(stage_thresholds)
        self.factor = float(factor)
        self.batch_size = int(batch_size)
        self.max_batch_pixels = 8_000_000
        self.pnet, self.rnet, self.onet = _load_mtcnn_nets(device)
        # The R- and O-nets run on thousands of small crops: channels-last convolutions and
        # pooling are about twice as fast there on CPU (same results up to float rounding).
        self.rnet = self.rnet.to(memory_format=torch.channels_last)
        self.onet = self.onet.to(memory_format=torch.channels_last)

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Faces in each image; same-size images run together in batches."""
        out: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.size, []).append(i)
        for (width, height), members in groups.items():
            # Bound memory: about 8 Mpixels per batch (e.g. 4 full-HD frames).
            step = max(1, min(self.batch_size, self.max_batch_pixels // (width * height)))
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                arrays = [np.asarray(images[i].convert("RGB"), dtype=np.uint8) for i in chunk]
                batch = torch.from_numpy(np.stack(arrays)).to(self.device)
                batch = batch.permute(0, 3, 1, 2).float()
                for i, result in zip(chunk, self._cascade(batch)):
                    out[i] = result
        return [d if d is not None else Detections.empty(True) for d in out]

    @torch.inference_mode()
    def _cascade(self, batch: torch.Tensor) -> list[Detections]:
        n_images, _, height, width = batch.shape
        t_p, t_r = self.stage_thresholds
        # Stage 1: PNet over an image pyramid, faces of min_face pixels map to 12 pixels.
        scale = 12.0 / self.min_face
        side = min(height, width) * scale
        found, found_inds = [], []
        while side >= 12:
            size = (int(height * scale + 1), int(width * scale + 1))
            level = (F.interpolate(batch, size=size, mode="area") - 127.5) * 0.0078125
            reg, prob = self.pnet(level)
            mask = prob[:, 1] >= t_p
            idx = mask.nonzero()
            if len(idx):
                cell = idx[:, 1:].flip(1).to(batch.dtype)  # (x, y) cells
                q1 = ((2 * cell + 1) / scale).floor()
                q2 = ((2 * cell + 12) / scale).floor()
                regs = reg.permute(0, 2, 3, 1)[mask]
                boxes = torch.cat([q1, q2, prob[:, 1][mask][:, None], regs], dim=1)
                keep = batched_nms(boxes[:, :4], boxes[:, 4], idx[:, 0], 0.5)
                found.append(boxes[keep])
                found_inds.append(idx[keep, 0])
            scale *= self.factor
            side *= self.factor
        if not found:
            return [Detections.empty(True) for _ in range(n_images)]
        boxes, inds = torch.cat(found), torch.cat(found_inds)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[keep], inds[keep]
        boxes = _square(_regress(boxes[:, :5], boxes[:, 5:9]))

        # Stage 2: RNet refines and rejects.
        if len(boxes):
            reg, prob = self._run(self.rnet, _crops(batch, boxes, inds, 24))
            ok = prob[:, 1] > t_r
            boxes = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1)
            inds, reg = inds[ok], reg[ok]
            keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep]))
            inds = inds[keep]

        # Stage 3: ONet scores, final boxes and landmarks.
        points = torch.zeros((0, 5, 2), device=batch.device)
        if len(boxes):
            reg, marks, prob = self._run(self.onet, _crops(batch, boxes, inds, 48))
            ok = prob[:, 1] > self.threshold
            boxes = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1)
            inds, reg, marks = inds[ok], reg[ok], marks[ok]
            w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            px = w * marks[:, :5] + boxes[:, 0:1] - 1
            py = h * marks[:, 5:] + boxes[:, 1:2] - 1
            points = torch.stack([px, py], dim=2)
            boxes = _regress(boxes, reg)
        results = []
        for i in range(n_images):
            sel = (inds == i).nonzero().flatten()
            if len(sel):
                sel = sel[_nms_min(boxes[sel, :4], boxes[sel, 4], 0.7)]
            b = boxes[sel].cpu().numpy()
            p = points[sel].cpu().numpy().astype(np.float32)
            xywh, inside = clip_boxes(b[:, :4], width, height)
            results.append(Detections(xywh, b[inside, 4].astype(np.float32), p[inside]))
        return results

    @staticmethod
    def _run(net: nn.Module, data: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, ...]:
        parts = [net(data[i:i + chunk].contiguous(memory_format=torch.channels_last))
                 for i in range(0, len(data), chunk)]
        return tuple(torch.cat(p, dim=0) for p in zip(*parts))

    @contextlib.contextmanager
    def one_thread(self) -> Iterator[None]:
        """torch on one thread for the block (small batches of tiny convolutions, where a
        second thread only adds waiting, most of all on a busy machine)."""
        n = torch.get_num_threads()
        if n == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def track(self, image: Image.Image | np.ndarray, boxes: np.ndarray) -> tuple[Detections, np.ndarray]:
        """Follow faces found in the previous frame into ``image`` without the cascade.

        Each ``[x, y, w, h]`` box of the previous frame is squared and handed to the O-net
        (the cascade's last stage) twice: the first pass moves the box onto the face, the
        second scores, regresses and places the landmarks from the re-centred crop. A box
        whose score falls below ``threshold`` has lost its face. Boxes that land on one
        face are merged as the cascade's last step merges them.

        Returns:
            ``(detections, found)``: the faces still found (clipped, with landmarks), and
            per input box whether its face is still there (merged boxes count as found).
        """
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            return Detections.empty(True), np.zeros(0, dtype=bool)
        arr = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        height, width = arr.shape[:2]
        with torch.inference_mode():
            batch = torch.from_numpy(arr).to(self.device).permute(2, 0, 1)[None].float()
            xyxy = torch.from_numpy(np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]]).to(self.device)
            inds = torch.zeros(len(xyxy), dtype=torch.long, device=self.device)
            sq = _square(xyxy)
            reg, _, _ = self._run(self.onet, _crops(batch, sq, inds, 48))
            sq = _square(_regress(sq, reg))
            reg, marks, prob = self._run(self.onet, _crops(batch, sq, inds, 48))
            ok = prob[:, 1] > self.threshold
            w = (sq[:, 2] - sq[:, 0] + 1)[:, None]
            h = (sq[:, 3] - sq[:, 1] + 1)[:, None]
            points = torch.stack([w * marks[:, :5] + sq[:, 0:1] - 1, h * marks[:, 5:] + sq[:, 1:2] - 1], dim=2)
            final = _regress(sq, reg)
            sel = ok.nonzero().flatten()
            if len(sel):
                sel = sel[_nms_min(final[sel], prob[sel, 1], 0.7)]
            found = ok.cpu().numpy()
            xywh, inside = clip_boxes(final[sel].cpu().numpy(), width, height)
            return (Detections(xywh, prob[sel, 1].cpu().numpy()[inside].astype(np.float32),
                               points[sel].cpu().numpy().astype(np.float32)[inside]), found)
