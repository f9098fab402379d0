"""Model inputs derived from the graph, for the oracle, `verify` and data-free calibration.

Random integers in a fixed small range test little and break a lot: token ids 0..9 leave most
of a vocabulary unexercised (a byte classifier loses 77 of its 257 byte values unseen), type ids
up to 9 index past a 2-row table, random masks make every attention row -inf. So each free input
is first given a *role* by tracing what it reaches, through ops that only move or cast values:

- `index`: integers in [low, high): the rows of the Gather table it indexes (the smallest, when
  it indexes several; EmbedLayerNormalization's word and segment tables alike), a OneHot depth
  (or an Equal with 0..depth-1, jax2tf's one-hot), the size a Slice bound cuts, 1..64 for a
  Range limit. Untraced integers keep [0, 10).
- `mask`: ones: named like a mask (float masks too), or reaching Where, Not, And, Or, Xor or
  a Cast to bool.
- `positions`: 0, 1, 2, ... along the last axis, when named like position ids (OPT and GPT
  derive positions from the mask; a ones mask keeps those in range too).
- `value`: one fixed value: a scalar compared with a constant before an If condition (a sample
  rate checked against 16000) takes that constant. A scalar that reaches an If condition any
  other way cannot be guessed: drawing it is a BadInput naming the input and `--inputs`.
- `float`: floats, drawn from a distribution the caller chooses (N(0, 1) first).

Symbolic sizes, and the `-1` and `0` sizes some exporters declare for unknown ones (paddle2onnx,
VAD models), are dynamic: one size per symbol across inputs, 1 on axis 0 (batch), 64 elsewhere
unless given. An `InputSet` is the drawn arrays plus what they are (`describe`, `text`) and, for
generated inputs, the alternative input sets the oracle tries when the outputs are dead at the
first (image-like [0, 1] and [0, 255] floats, floats x 10, another seed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from graphprune.errors import BadInput
from graphprune.graph import GraphIndex, attribute, node_label

DYNAMIC_DIM = 64  # size given to a symbolic non-batch dimension when no shape is supplied
DEFAULT_HIGH = 10  # integers that reach no table: [0, 10)

# ops that hand their first input's values on unchanged (only moved, copied or cast)
VALUE_CARRIERS = {
    "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose",
    "Tile", "Slice", "Concat",
}  # fmt: skip
MASK_READERS = {"Not", "And", "Or", "Xor"}
COMPARISONS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
BOOL_CARRIERS = {"Not", "And", "Or", "Xor", "Cast", "Identity", "Squeeze", "Reshape"}


@dataclass(frozen=True)
class Role:
    """What one free input is, as traced from the graph (see the module docstring)."""

    kind: str  # "float", "index", "mask", "positions", "value", "selector", "bools"
    low: int = 0  # index: values in [low, high)
    high: int = DEFAULT_HIGH
    value: float = 0.0  # value: the one value
    why: str = ""  # what decided it, for the description of the inputs

    def how(self, floats: str) -> str:
        if self.kind == "float":
            return floats
        if self.kind == "index":
            return f"ints in [{self.low}, {self.high})" + (f": {self.why}" if self.why else "")
        if self.kind == "value":
            return f"{self.value:g} ({self.why})"
        return {"mask": "ones", "positions": "arange", "bools": "random bools"}[self.kind] + (
            f" ({self.why})" if self.why else ""
        )


def roles(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, Role]:
    """The role of every free input of `model`, by name, in input order."""
    index = index or GraphIndex.build(model)
    return {value.name: _role(index, value) for value in free_inputs(model)}


def _role(index: GraphIndex, value: onnx.ValueInfoProto) -> Role:
    dtype = input_dtype(value)
    lowered = value.name.lower()
    if "mask" in lowered:  # float attention masks too: random ones would mask at random
        return Role("mask", why="named so")
    if np.issubdtype(dtype, np.floating):
        return Role("float")
    uses = list(_reached(index, value.name))
    if "position" in lowered:
        high = _index_high(index, uses)
        return Role("positions", high=high[0] if high else 0, why="named so")
    control = _control_flow_role(index, value.name, uses)
    if control is not None:
        return control
    for node, slot in uses:
        if node.op_type in MASK_READERS or (node.op_type == "Where" and slot == 0):
            return Role("mask", why=f"reaches {node.op_type}")
        if node.op_type == "Cast" and attribute(node, "to") == onnx.TensorProto.BOOL:
            return Role("mask", why="cast to bool")
    bounds = _index_high(index, uses)
    if bounds:
        high, why = bounds
        return Role("index", low=_low(uses), high=high, why=why)
    if "token_type" in lowered or "segment" in lowered:
        return Role("index", high=1, why="type ids, no table found")
    if dtype == np.bool_:
        return Role("bools")
    return Role("index", why="reaches no table")


def _reached(index: GraphIndex, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
    """(node, input slot) of every op reading `name` or a copy of its values made by
    VALUE_CARRIERS (a Cast to bool is a reader: it makes a mask)."""
    todo, seen = [name], set()
    while todo:
        tensor = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for position in index.consumers.get(tensor, []):
            node = index.node(position)
            for slot, used in enumerate(node.input):
                if used != tensor:
                    continue
                carries = node.op_type in VALUE_CARRIERS and (slot == 0 or node.op_type == "Concat")
                to_bool = node.op_type == "Cast" and attribute(node, "to") == onnx.TensorProto.BOOL
                if carries and not to_bool:
                    todo.append(node.output[0])
                else:
                    yield node, slot


def _index_high(
    index: GraphIndex, uses: list[tuple[onnx.NodeProto, int]]
) -> tuple[int, str] | None:
    """The smallest exclusive upper bound the ops in `uses` put on the values, and why."""
    bounds = []
    for node, slot in uses:
        found = _bound(index, node, slot)
        if found is not None:
            bounds.append(found)
    return min(bounds) if bounds else None


def _bound(index: GraphIndex, node: onnx.NodeProto, slot: int) -> tuple[int, str] | None:
    op = node.op_type
    if op == "Gather" and slot == 1:
        axis = attribute(node, "axis", 0)
        rows = _static_size(index, node.input[0], axis)
        return None if rows is None else (rows, f"rows of Gather table '{node.input[0]}'")
    if op == "EmbedLayerNormalization" and slot in (0, 1):
        table = node.input[2 if slot == 0 else 4] if len(node.input) > 4 else ""
        rows = _static_size(index, table, 0) if table else None
        return None if rows is None else (rows, f"rows of embedding table '{table}'")
    if op == "OneHot" and slot == 0 and index.is_constant(node.input[1]):
        depth = int(np.asarray(index.constants[node.input[1]]).reshape(-1)[0])
        return depth, f"OneHot depth of {node_label(node, 0)}"
    if op == "Slice" and slot in (1, 2):
        size = _sliced_size(index, node)
        return None if size is None else (size + 1, f"bound of a Slice over {size}")
    if op == "Range" and slot == 1:
        return DYNAMIC_DIM + 1, "Range limit"
    if op == "Equal":  # a one-hot written as x == [0, 1, ..., depth - 1] (jax2tf)
        other = _constant_behind(index, node.input[1 - slot])
        if other is not None and other.size > 1 and np.issubdtype(other.dtype, np.integer):
            return int(other.max()) + 1, f"one-hot: compared with {other.min()}..{other.max()}"
    return None


def _constant_behind(index: GraphIndex, tensor: str) -> np.ndarray | None:
    """The constant `tensor` copies (through Expand, Reshape, Cast...), or None."""
    for _ in range(4):
        if index.is_constant(tensor):
            return np.asarray(index.constants[tensor])
        producer = index.producer.get(tensor)
        if producer is None or index.node(producer).op_type not in VALUE_CARRIERS:
            return None
        tensor = index.node(producer).input[0]
    return None


def _low(uses: list[tuple[onnx.NodeProto, int]]) -> int:
    """1 for a Range limit or Slice end (an empty range or slice tests nothing), else 0."""
    ends = [(n.op_type == "Range" and s == 1) or (n.op_type == "Slice" and s == 2) for n, s in uses]
    return 1 if ends and all(ends) else 0


def _static_size(index: GraphIndex, tensor: str, axis: int) -> int | None:
    """`tensor`'s static size on `axis`, looking through Cast/Identity/DequantizeLinear to a
    constant (fp16 or int8 tables)."""
    for _ in range(4):
        size = index.static_size(tensor, axis)
        if size is not None and size > 0:
            return size
        producer = index.producer.get(tensor)
        if producer is None:
            return None
        node = index.node(producer)
        if node.op_type not in ("Cast", "Identity", "DequantizeLinear"):
            return None
        tensor = node.input[0]
    return None


def _sliced_size(index: GraphIndex, node: onnx.NodeProto) -> int | None:
    axes = index.const(node.input[3]) if len(node.input) > 3 else None
    axis = int(np.asarray(axes).reshape(-1)[0]) if axes is not None else 0
    return _static_size(index, node.input[0], axis)


def _control_flow_role(
    index: GraphIndex, name: str, uses: list[tuple[onnx.NodeProto, int]]
) -> Role | None:
    """A `value` role for an input compared with a constant before an If condition, a
    `selector` role for one reaching an If condition otherwise, None for neither."""
    for node, slot in uses:
        if node.op_type == "If" and slot == 0:
            return Role("selector", why=f"condition of {node_label(node, 0)}")
        if not _reaches_if_condition(index, node.output[0]):
            continue
        if node.op_type in BOOL_CARRIERS:  # a Cast to bool or a Not: the value is the branch
            return Role("selector", why=f"{node.op_type} into an If condition")
        if node.op_type not in COMPARISONS:
            continue
        other = node.input[1 - slot]
        if index.is_constant(other) and np.asarray(index.constants[other]).size == 1:
            constant = float(np.asarray(index.constants[other]).reshape(-1)[0])
            return Role("value", value=constant, why=f"{node.op_type} with it before an If")
        return Role("selector", why=f"compared before an If ({node_label(node, 0)})")
    return None


def _reaches_if_condition(index: GraphIndex, tensor: str) -> bool:
    todo, seen = [tensor], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for position in index.consumers.get(current, []):
            node = index.node(position)
            if node.op_type == "If" and node.input[0] == current:
                return True
            if node.op_type in BOOL_CARRIERS and current in node.input:
                todo.append(node.output[0])
    return False


# -- shapes -------------------------------------------------------------------------------------


def free_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def declared_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Each axis as declared: a static size (> 0), or a symbol ("" when unnamed). A `-1` or `0`
    size is how some exporters write an unknown one: it is dynamic."""
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
        for d in value.type.tensor_type.shape.dim
    ]


def input_dtype(value: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def input_shapes(
    model: onnx.ModelProto,
    given: Mapping[str, tuple[int, ...]] | None = None,
    batch: int = 1,
    int_size: int = DYNAMIC_DIM,
    float_size: int = DYNAMIC_DIM,
    found: Mapping[str, Role] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The shape of every free input: as `given`, else static sizes as declared and dynamic
    ones shared per symbol: `batch` on axis 0, `int_size` when an integer input names the
    symbol first, else `float_size` (a position-ids axis no longer than its table)."""
    given = dict(given or {})
    inputs = free_inputs(model)
    sizes: dict[str, int] = {}
    for value in inputs:
        for dim, size in zip(declared_dims(value), given.get(value.name, ()), strict=False):
            if isinstance(dim, str) and dim:
                sizes.setdefault(dim, size)
    integers_first = sorted(inputs, key=lambda v: np.issubdtype(input_dtype(v), np.floating))
    shapes = {}
    for value in integers_first:
        if value.name in given:
            shapes[value.name] = tuple(given[value.name])
            continue
        default = float_size if np.issubdtype(input_dtype(value), np.floating) else int_size
        role = (found or {}).get(value.name)
        if role is not None and role.kind == "positions" and role.high:
            default = min(default, role.high)
        shape = []
        for axis, dim in enumerate(declared_dims(value)):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            size = batch if axis == 0 else default
            shape.append(sizes.setdefault(dim, size) if dim else size)
        shapes[value.name] = tuple(shape)
    return {v.name: shapes[v.name] for v in inputs}


# -- drawing ------------------------------------------------------------------------------------

FloatDraw = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
FLOAT_DRAWS: dict[str, FloatDraw] = {
    "N(0,1)": lambda rng, shape: rng.standard_normal(shape),
    "U[0,1)": lambda rng, shape: rng.random(shape),
    "U[0,255)": lambda rng, shape: rng.random(shape) * 255,
    "N(0,1) x 10": lambda rng, shape: rng.standard_normal(shape) * 10,
}
# the input sets the oracle tries, in order: (float distribution, seed offset)
LONG_DYNAMIC_DIM = 512  # a fallback size for dynamic float axes: audio chunks, long sequences
CANDIDATES = (("N(0,1)", 0), ("U[0,1)", 1), ("U[0,255)", 2), ("N(0,1) x 10", 3), ("N(0,1)", 4))


def draw(
    role: Role, name: str, rng: np.random.Generator, shape: tuple[int, ...], floats: FloatDraw
) -> np.ndarray:
    """One input's values for its role (see the module docstring)."""
    if role.kind == "float":
        return floats(rng, shape)
    if role.kind == "index":
        return rng.integers(role.low, role.high, size=shape)
    if role.kind == "mask":
        return np.ones(shape)
    if role.kind == "positions":
        return np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).copy()
    if role.kind == "value":
        return np.full(shape, role.value)
    if role.kind == "bools":
        return rng.random(shape) < 0.5
    raise BadInput(
        f"input '{name}' selects a control-flow branch ({role.why}) and no value for it can be "
        "inferred from the graph: give it with --inputs FILE.npz"
    )


def refuse_selectors(found: Mapping[str, Role]) -> None:
    """BadInput for the first input that selects control flow with no inferable value."""
    for name, role in found.items():
        if role.kind == "selector":
            draw(role, name, np.random.default_rng(0), (), FLOAT_DRAWS["N(0,1)"])


class InputSet(dict):
    """Input arrays by name, with how each was made (`how`) and a label for the set; generated
    sets also know their `alternatives` (other distributions and seeds)."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        label: str = "given",
        how: Mapping[str, str] | None = None,
        alternatives: Callable[[], Iterator[InputSet]] | None = None,
        fallback: bool = False,
    ):
        super().__init__(arrays)
        self.label = label
        self.how = dict(how or {})
        self._alternatives = alternatives
        self.fallback = fallback  # to try only when no earlier set ran (other sizes)

    def alternatives(self) -> Iterator[InputSet]:
        return self._alternatives() if self._alternatives is not None else iter(())

    def describe(self) -> dict[str, dict]:
        """Per input: shape, dtype, the range of its values and how it was made."""
        described = {}
        for name, array in self.items():
            values = np.asarray(array)
            finite = values.size and np.issubdtype(values.dtype, np.number)
            described[name] = {
                "shape": list(values.shape),
                "dtype": str(values.dtype),
                "min": float(values.min()) if finite else None,
                "max": float(values.max()) if finite else None,
                "how": self.how.get(name, self.label),
            }
        return described

    def text(self) -> str:
        """One line: `name 1x64 int64 in [0, 256] (ints in [0, 257): rows of ...)` per input."""
        parts = []
        for name, item in self.describe().items():
            shape = "x".join(str(s) for s in item["shape"]) or "scalar"
            span = ""
            if item["min"] is not None:
                low, high = (_number(item[k], item["dtype"]) for k in ("min", "max"))
                span = f" in [{low}, {high}]"
            parts.append(f"{name} {shape} {item['dtype']}{span} ({item['how']})")
        return f"inputs ({self.label}): " + ", ".join(parts)


def _number(value: float, dtype: str) -> str:
    return str(int(value)) if "int" in dtype else f"{value:.4g}"


def as_input_set(inputs: Mapping[str, np.ndarray]) -> InputSet:
    """`inputs` as an InputSet: itself when it is one, else a given set without alternatives."""
    return inputs if isinstance(inputs, InputSet) else InputSet(inputs)


def default_inputs(
    model: onnx.ModelProto, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> InputSet:
    """Inputs for `model` from its graph (see the module docstring), floats N(0, 1). Their
    alternatives: the same with every dynamic size not given set to 1, then with dynamic float
    sizes of LONG_DYNAMIC_DIM, fallbacks for a model that does not run at the first (an unnamed
    dynamic axis may be a batch in disguise: an RNN state [2, batch, 128]; a VAD's reflect
    padding needs a chunk longer than 64 samples), then the other CANDIDATES."""
    found = roles(model)
    refuse_selectors(found)
    sized = input_shapes(model, shapes, found=found)
    small = input_shapes(model, shapes, int_size=1, float_size=1, found=found)
    long = input_shapes(model, shapes, float_size=LONG_DYNAMIC_DIM, found=found)
    fallbacks = {id(small): ", dynamic sizes 1", id(long): f", float sizes {LONG_DYNAMIC_DIM}"}
    dtypes = {v.name: input_dtype(v) for v in free_inputs(model)}
    has_floats = any(r.kind == "float" for r in found.values())

    def made(distribution: str, offset: int, sizes: Mapping[str, tuple[int, ...]]) -> InputSet:
        rng = np.random.default_rng(seed + offset)
        floats = FLOAT_DRAWS[distribution]
        arrays = {
            name: np.asarray(draw(role, name, rng, sizes[name], floats)).astype(dtypes[name])
            for name, role in found.items()
        }
        how = {name: role.how(distribution) for name, role in found.items()}
        label = f"{distribution} floats, seed {seed + offset}" if has_floats else ""
        label = (label or f"seed {seed + offset}") + fallbacks.get(id(sizes), "")
        return InputSet(arrays, label, how, fallback=id(sizes) in fallbacks)

    def alternatives() -> Iterator[InputSet]:
        for other in (small, long):
            if other != sized:
                yield made(*CANDIDATES[0], other)
        # without float inputs only the seed can change
        others = CANDIDATES[1:] if has_floats else (("N(0,1)", 1), ("N(0,1)", 2))
        for distribution, offset in others:
            yield made(distribution, offset, sized)

    first = made(*CANDIDATES[0], sized)
    first._alternatives = alternatives
    return first
