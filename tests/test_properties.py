"""Property: any random chain of supported blocks, pruned at any share, matches its oracle."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.graphs import ints, model, node, positive, prune_every_group, weight

BLOCKS = ("conv", "depthwise", "grouped", "bn_relu", "residual", "concat", "split", "pool")


class Chain:
    """Builds a random CNN one block at a time, tracking the current tensor and its width."""

    def __init__(self, width: int):
        self.nodes, self.constants, self.count = [], {}, 0
        self.current = "x"
        self.width = width

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def conv(self, c_out: int, k: int = 1, group: int = 1, source: str | None = None) -> str:
        out = self.name("conv")
        fan_in = self.width // group * k * k
        # He-style scaling keeps activations O(1), as in trained nets; unscaled random weights
        # grow them to ~1e5 where fp32 round-off alone exceeds the oracle's atol.
        self.constants[f"{out}.w"] = weight(c_out, self.width // group, k, k) / fan_in**0.5
        self.constants[f"{out}.b"] = weight(c_out)
        self.nodes.append(
            node(
                "Conv",
                [source or self.current, f"{out}.w", f"{out}.b"],
                [out],
                pads=[k // 2] * 4,
                group=group,
            )
        )
        return out

    def add(self, kind: str, draw) -> None:
        width = self.width
        if kind == "conv":
            c_out = draw(st.integers(2, 12))
            self.current, self.width = self.conv(c_out, draw(st.sampled_from([1, 3]))), c_out
        elif kind == "depthwise":
            self.current = self.conv(width, 3, group=width)
        elif kind == "grouped" and width % 2 == 0 and width >= 4:
            self.current = self.conv(width, 3, group=2)
        elif kind == "bn_relu":
            out = self.name("bn")
            params = [f"{out}.{p}" for p in ("s", "b", "m", "v")]
            for p, value in zip(
                params,
                (positive(width), weight(width), weight(width), positive(width)),
                strict=True,
            ):
                self.constants[p] = value
            self.nodes += [
                node("BatchNormalization", [self.current, *params], [out]),
                node("Relu", [out], [out + "r"]),
            ]
            self.current = out + "r"
        elif kind == "residual":
            branch = self.conv(width, 3)
            out = self.name("add")
            self.nodes.append(node("Add", [self.current, branch], [out]))
            self.current = out
        elif kind == "concat":
            extra = draw(st.integers(2, 6))
            side = self.conv(extra, 1)
            out = self.name("cat")
            self.nodes.append(node("Concat", [self.current, side], [out], axis=1))
            self.current, self.width = out, width + extra
        elif kind == "split" and width >= 4:
            out = self.name("split")
            first = width // 2
            self.constants[f"{out}.sizes"] = ints(first, width - first)
            self.nodes.append(
                node("Split", [self.current, f"{out}.sizes"], [out + "a", out + "b"], axis=1)
            )
            self.width = first
            a = self.conv(first, 1, source=out + "a")
            self.width = width - first
            b = self.conv(first, 1, source=out + "b")
            joined = self.name("join")
            self.nodes.append(node("Add", [a, b], [joined]))
            self.current, self.width = joined, first
        elif kind == "pool":
            out = self.name("pool")
            self.nodes.append(
                node(
                    "MaxPool",
                    [self.current],
                    [out],
                    kernel_shape=[2, 2],
                    strides=[1, 1],
                    pads=[0, 0, 1, 1],
                )
            )
            self.current = out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_chains_prune_exactly(data):
    chain = Chain(width=3)
    chain.add("conv", data.draw)
    for kind in data.draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=7)):
        chain.add(kind, data.draw)
    chain.add("conv", data.draw)
    made = model(chain.nodes, {"x": (1, 3, 6, 6)}, [chain.current], chain.constants)
    share = data.draw(st.sampled_from([0.25, 0.5, 0.75]))
    try:
        prune_every_group(made, share=share, seed=data.draw(st.integers(0, 1000)))
    except AssertionError as err:
        if "nothing was prunable" not in str(err):
            raise
