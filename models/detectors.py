"""Small one-stage detectors written here in torch (random init, nothing downloaded), for the zoo.

Their necks are what a dependency graph finds hardest: Concats whose inputs are shared with other
Concats, so that a group's units are spread over spaces none of which holds them all.

- `YoloV8Style`: the YOLOv8 layout at reduced width. C2f blocks (Conv -> Split into two halves ->
  a chain of bottlenecks on the second half -> Concat of every piece -> Conv), SPPF (three chained
  MaxPools concatenated), a PAN neck (Upsample + Concat top-down, strided Conv + Concat
  bottom-up, the SPPF and C2f outputs each read by two Concats), decoupled box and class heads,
  DFL (a softmax over the box bins and a fixed 1x1 conv) and the three levels concatenated into
  one [1, 4 + classes, anchors] output.
- `YoloXStyle`: the YOLOX layout at reduced width. A Focus stem (four strided slices
  concatenated), CSP blocks (two 1x1 branches, bottlenecks on one, Concat, 1x1), SPP with
  three pool sizes, the PAFPN neck, and decoupled heads whose outputs are box (4), objectness
  (1 channel: a 1-wide Concat piece) and classes, flattened into [1, anchors, 5 + classes].
- `NhwcCnn`: a Keras/tf2onnx-style classifier: an NHWC input, each Conv between Transposes,
  bias, ReLU and pooling applied channels-last, and a channels-last Flatten (Reshape) before
  the Dense layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CLASSES = 4


class ConvBnSiLU(nn.Module):
    """Conv (no bias) + BatchNorm + SiLU, as both YOLO families write it."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two convs (`k` then 3x3), with a residual Add when `shortcut`."""

    def __init__(self, c: int, shortcut: bool, k: int = 3):
        super().__init__()
        self.cv1 = ConvBnSiLU(c, c, k)
        self.cv2 = ConvBnSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


# ---------------------------------------------------------------------------------- YOLOv8


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 -> split in halves -> n bottlenecks chained on the second half ->
    Concat(both halves, every bottleneck output) -> cv2."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: cv1, three chained 5x5 MaxPools, Concat of all four, cv2."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBnSiLU(c_in, hidden)
        self.cv2 = ConvBnSiLU(hidden * 4, c_out)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decode: softmax over each side's bins, expected bin (fixed conv)."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def _branch(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        ConvBnSiLU(c_in, hidden, 3), ConvBnSiLU(hidden, hidden, 3), nn.Conv2d(hidden, c_out, 1)
    )


class Detect(nn.Module):
    """YOLOv8's decoupled head: per level a box branch (4 * bins) and a class branch."""

    def __init__(self, channels: tuple[int, ...], bins: int = 4):
        super().__init__()
        self.bins, self.outputs = bins, 4 * bins + CLASSES
        box, cls = max(16, channels[0] // 4, 4 * bins), max(channels[0], CLASSES)
        self.cv2 = nn.ModuleList(_branch(c, box, 4 * bins) for c in channels)
        self.cv3 = nn.ModuleList(_branch(c, cls, CLASSES) for c in channels)
        self.dfl = DFL(bins)

    def forward(self, levels):
        b = levels[0].shape[0]
        joined = torch.cat(
            [
                torch.cat((box(x), cls(x)), 1).view(b, self.outputs, -1)
                for x, box, cls in zip(levels, self.cv2, self.cv3, strict=True)
            ],
            2,
        )
        boxes, scores = joined.split((4 * self.bins, CLASSES), 1)
        return torch.cat((self.dfl(boxes), scores.sigmoid()), 1)


class YoloV8Style(nn.Module):
    """Backbone (strided convs + C2f + SPPF), PAN neck, decoupled heads; widths 16..128."""

    def __init__(self, w: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(ConvBnSiLU(3, w[0], 3, 2), ConvBnSiLU(w[0], w[1], 3, 2))
        self.stage2 = C2f(w[1], w[1], 1, True)
        self.stage3 = nn.Sequential(ConvBnSiLU(w[1], w[2], 3, 2), C2f(w[2], w[2], 2, True))
        self.stage4 = nn.Sequential(ConvBnSiLU(w[2], w[3], 3, 2), C2f(w[3], w[3], 2, True))
        self.stage5 = nn.Sequential(
            ConvBnSiLU(w[3], w[3], 3, 2), C2f(w[3], w[3], 1, True), SPPF(w[3], w[3])
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = C2f(w[3] + w[3], w[3], 1, False)
        self.top3 = C2f(w[3] + w[2], w[2], 1, False)
        self.down3 = ConvBnSiLU(w[2], w[2], 3, 2)
        self.bottom4 = C2f(w[2] + w[3], w[3], 1, False)
        self.down4 = ConvBnSiLU(w[3], w[3], 3, 2)
        self.bottom5 = C2f(w[3] + w[3], w[3], 1, False)
        self.detect = Detect((w[2], w[3], w[3]))

    def forward(self, x):
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        top4 = self.top4(torch.cat((self.up(p5), p4), 1))
        out3 = self.top3(torch.cat((self.up(top4), p3), 1))
        out4 = self.bottom4(torch.cat((self.down3(out3), top4), 1))
        out5 = self.bottom5(torch.cat((self.down4(out4), p5), 1))
        return self.detect([out3, out4, out5])


# ---------------------------------------------------------------------------------- YOLOX


class Focus(nn.Module):
    """Space to depth: the four pixel phases concatenated on channels, then a conv."""

    def __init__(self, c_out: int):
        super().__init__()
        self.conv = ConvBnSiLU(12, c_out, 3)

    def forward(self, x):
        phases = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(phases, 1))


class CSPLayer(nn.Module):
    """YOLOX's CSP block: two 1x1 branches, bottlenecks (1x1 then 3x3) on one, Concat, 1x1."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.conv1 = ConvBnSiLU(c_in, hidden)
        self.conv2 = ConvBnSiLU(c_in, hidden)
        self.conv3 = ConvBnSiLU(2 * hidden, c_out)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut, k=1) for _ in range(n)))

    def forward(self, x):
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), 1))


class SPPBottleneck(nn.Module):
    """SPP: a 1x1 conv, MaxPools of 5, 9 and 13 in parallel, Concat with the input, 1x1."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in // 2
        self.conv1 = ConvBnSiLU(c_in, hidden)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.conv2 = ConvBnSiLU(hidden * 4, c_out)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.pools)], 1))


class YoloXHead(nn.Module):
    """Decoupled head per level: stem, class branch, box branch with box (4) and objectness (1)."""

    def __init__(self, channels: tuple[int, ...], hidden: int = 32):
        super().__init__()

        def branch():
            return nn.Sequential(ConvBnSiLU(hidden, hidden, 3), ConvBnSiLU(hidden, hidden, 3))

        self.stems = nn.ModuleList(ConvBnSiLU(c, hidden) for c in channels)
        self.cls_convs = nn.ModuleList(branch() for _ in channels)
        self.reg_convs = nn.ModuleList(branch() for _ in channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, CLASSES, 1) for _ in channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in channels)

    def forward(self, levels):
        outputs = []
        for k, x in enumerate(levels):
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))
            reg = self.reg_convs[k](x)
            box, obj = self.reg_preds[k](reg), self.obj_preds[k](reg)
            outputs.append(torch.cat((box, obj.sigmoid(), cls.sigmoid()), 1).flatten(2))
        return torch.cat(outputs, 2).permute(0, 2, 1)


class YoloXStyle(nn.Module):
    """Focus stem, CSPDarknet, SPP, PAFPN neck, decoupled heads; widths 16..128."""

    def __init__(self, w: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.stem = Focus(w[0])
        self.dark2 = nn.Sequential(ConvBnSiLU(w[0], w[1], 3, 2), CSPLayer(w[1], w[1], 1))
        self.dark3 = nn.Sequential(ConvBnSiLU(w[1], w[2], 3, 2), CSPLayer(w[2], w[2], 1))
        self.dark4 = nn.Sequential(ConvBnSiLU(w[2], w[3], 3, 2), CSPLayer(w[3], w[3], 1))
        self.dark5 = nn.Sequential(
            ConvBnSiLU(w[3], w[3], 3, 2), SPPBottleneck(w[3], w[3]), CSPLayer(w[3], w[3], 1, False)
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = ConvBnSiLU(w[3], w[2])
        self.c3_p4 = CSPLayer(w[2] + w[3], w[2], 1, False)
        self.reduce_conv1 = ConvBnSiLU(w[2], w[1])
        self.c3_p3 = CSPLayer(w[1] + w[2], w[1], 1, False)
        self.bu_conv2 = ConvBnSiLU(w[1], w[1], 3, 2)
        self.c3_n3 = CSPLayer(w[1] + w[1], w[2], 1, False)
        self.bu_conv1 = ConvBnSiLU(w[2], w[2], 3, 2)
        self.c3_n4 = CSPLayer(w[2] + w[2], w[3], 1, False)
        self.head = YoloXHead((w[1], w[2], w[3]))

    def forward(self, x):
        x2 = self.dark3(self.dark2(self.stem(x)))
        x1 = self.dark4(x2)
        x0 = self.dark5(x1)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.c3_p4(torch.cat((self.up(fpn_out0), x1), 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.c3_p3(torch.cat((self.up(fpn_out1), x2), 1))
        pan_out1 = self.c3_n3(torch.cat((self.bu_conv2(pan_out2), fpn_out1), 1))
        pan_out0 = self.c3_n4(torch.cat((self.bu_conv1(pan_out1), fpn_out0), 1))
        return self.head([pan_out2, pan_out1, pan_out0])


# ---------------------------------------------------------------------------------- NHWC


class NhwcCnn(nn.Module):
    """A Keras-style classifier on an NHWC image: every Conv sits between Transposes (what
    tf2onnx writes), bias and ReLU act on the last axis, Flatten merges H, W, C in that order."""

    def __init__(self, widths: tuple[int, ...] = (16, 32), size: int = 32, classes: int = 10):
        super().__init__()
        inputs = (3, *widths[:-1])
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(inputs, widths, strict=True)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.randn(c) * 0.1) for c in widths)
        side = size // 2 ** len(widths)
        self.dense = nn.Linear(side * side * widths[-1], classes)

    def forward(self, x):  # x: [N, H, W, C]
        for conv, bias in zip(self.convs, self.biases, strict=True):
            x = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = torch.relu(x + bias)
            x = nn.functional.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        return self.dense(x.reshape(x.shape[0], -1))


def build(kind: str) -> Any:
    """The detector `kind` ("yolov8", "yolox" or "nhwc") with seeded weights and random BN
    statistics, in eval mode."""
    from models.entry import SEED
    from models.zoo import randomize_batchnorm

    classes = {"yolov8": YoloV8Style, "yolox": YoloXStyle, "nhwc": NhwcCnn}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = classes[kind]()
    return randomize_batchnorm(model).eval()
