"""Analyze: the dependency graph of channel spaces, its groups, and the units inside each group.

Every rule of the op table runs once per node and links channel spaces (networkx nodes) with
explicit index relations. A connected component is a **group**: the spaces that must lose
indices together. Inside a group, individual indices are joined through the relations
(union-find); each resulting class is a **unit**, the smallest thing that can be removed (a
channel, a shuffle pair, a whole GroupNorm group, a local index of a grouped conv).

A group is prunable only if it is *closed*: every node that produces or consumes one of its
spaces linked that space (so it knows how to shrink it), no space is a graph input or output,
and no rule blocked one of its spaces. An op without a rule links nothing, so it blocks every
group it touches, with the reason. A space of width 1 (a 1-wide Concat or Split piece) never
loses its index (no space is ever emptied), so what touches it need not follow it.

A rule may also mark a space *inexact*: removing one of its indices changes what the node
computes from the others (LayerNorm/RMSNorm statistics over the residual stream). Such a group
is of kind `hidden`, may be pruned, and the zero-then-prune oracle reports it without judging.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np
import onnx

from graphprune.graph import GraphIndex, node_label
from graphprune.ops import Fix, Role, RuleContext, Space, control_flow_reason, rule_for


@dataclass
class Group:
    """Spaces that lose the same units together, and everything that must follow them."""

    id: str
    anchor: Space  # the space holding the most units (every unit, unless none holds them all)
    sizes: dict[Space, int]
    labels: dict[Space, np.ndarray]  # unit id of every index of every space
    n_units: int
    roles: dict[Space, Role]  # constant spaces and what they do for the channel
    fixes: list[Fix]
    blocked: list[str]  # why the group cannot be pruned; empty if it can
    kind: str = "channel"
    inexact: list[str] = field(default_factory=list)  # why the oracle cannot be exact; see exact

    @property
    def prunable(self) -> bool:
        return not self.blocked

    @property
    def exact(self) -> bool:
        """Whether the zero-then-prune oracle is exact for this group: not when a node's result
        depends on how many channels there are (a normalization's statistics)."""
        return not self.inexact

    @property
    def spaces(self) -> list[Space]:
        return sorted(self.sizes)

    def indices(self, space: Space, units: np.ndarray) -> np.ndarray:
        """Indices of `space` that belong to `units`."""
        return np.flatnonzero(np.isin(self.labels[space], units))

    @property
    def anchor_unit_count(self) -> int:
        """Units with an index in the anchor; they are numbered first (0 .. count - 1)."""
        return int(self.labels[self.anchor].max()) + 1

    @property
    def plan_index_count(self) -> int:
        """How many indices a plan may name: the anchor's, then one per unit it lacks."""
        return len(self.labels[self.anchor]) + self.n_units - self.anchor_unit_count

    def anchor_units(self, anchor_indices) -> np.ndarray:
        """Units that own the given plan indices (how a saved plan names its removals): an
        anchor index names its unit; index len(anchor) + k names the k-th unit the anchor lacks
        (a neck whose Concats share inputs has no space holding every unit)."""
        indices = np.asarray(anchor_indices, dtype=np.int64)
        anchor_labels = self.labels[self.anchor]
        inside = indices < len(anchor_labels)
        units = np.empty(len(indices), dtype=np.int64)
        units[inside] = anchor_labels[indices[inside]]
        units[~inside] = self.anchor_unit_count + indices[~inside] - len(anchor_labels)
        return np.unique(units)

    def first_anchor_index(self, units: np.ndarray) -> np.ndarray:
        """For each unit, its plan index: its first index in the anchor space, or, for a unit
        the anchor lacks, len(anchor) + its rank among those (the inverse of `anchor_units`)."""
        # units are numbered by first appearance along the anchor, so `first` is indexed by unit
        _, first = np.unique(self.labels[self.anchor], return_index=True)
        units = np.asarray(units, dtype=np.int64)
        inside = units < self.anchor_unit_count
        indices = np.empty(len(units), dtype=np.int64)
        indices[inside] = first[units[inside]]
        indices[~inside] = len(self.labels[self.anchor]) + units[~inside] - self.anchor_unit_count
        return indices


@dataclass
class DepGraph:
    """The links all rules made, and the groups they form. Build with `DepGraph.build(model)`."""

    index: GraphIndex
    graph: nx.Graph = field(default_factory=nx.Graph)
    links: list[tuple[Space, Space, np.ndarray, np.ndarray]] = field(default_factory=list)
    touched: dict[int, set[Space]] = field(default_factory=lambda: defaultdict(set))
    blocks: dict[Space, list[str]] = field(default_factory=lambda: defaultdict(list))
    roles: dict[Space, Role] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)
    missing_rules: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    head_spaces: set[Space] = field(default_factory=set)
    inexact: dict[Space, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, model: onnx.ModelProto) -> DepGraph:
        """`model` must already carry inferred shapes (see `load.infer_shapes`)."""
        dep = cls(index=GraphIndex.build(model))
        for position, node in enumerate(model.graph.node):
            rule = rule_for(node)
            if rule is None:
                if node.op_type != "Constant":
                    dep.missing_rules[_op_name(node)] += 1
                continue
            rule(RuleContext(dep.index, position, dep))
        return dep

    # -- the sink rules write into -------------------------------------------------------------
    def add_link(self, position: int, a: Space, size_a: int, b: Space, size_b: int, pairs):
        ia, ib = (np.asarray(p, dtype=np.int64) for p in pairs)
        self.graph.add_node(a, size=size_a)
        self.graph.add_node(b, size=size_b)
        self.graph.add_edge(a, b)
        self.links.append((a, b, ia, ib))
        self.touched[position].update((a, b))

    def add_role(self, space: Space, role: Role) -> None:
        # A constant read by one op and transformed by another keeps the reading role: the
        # oracle must zero what reads a removed channel.
        if self.roles.get(space) != Role.IN:
            self.roles[space] = role

    def add_fix(self, fix: Fix) -> None:
        self.fixes.append(fix)

    def add_block(self, position: int, space: Space, reason: str) -> None:
        self.blocks[space].append(reason)

    def add_tolerated(self, position: int, space: Space) -> None:
        self.touched[position].add(space)

    def add_head_space(self, space: Space) -> None:
        self.head_spaces.add(space)

    def add_inexact(self, space: Space, reason: str) -> None:
        self.inexact[space].append(reason)

    def holds_channel(self, space: Space) -> bool:
        """Whether `space` is linked, so far, to a constant slice with a role."""
        if space not in self.graph:
            return False
        return any(s in self.roles for s in nx.node_connected_component(self.graph, space))

    # -- groups -------------------------------------------------------------------------------
    @cached_property
    def groups(self) -> list[Group]:
        """Candidate groups (at least one constant slice and two units), prunable or blocked."""
        return [g for g in self.all_groups if g.n_units >= 2]

    @cached_property
    def all_groups(self) -> list[Group]:
        """Every group with a constant slice, single-unit ones included (for reports)."""
        links_by_space = defaultdict(list)
        for link in self.links:
            links_by_space[link[0]].append(link)
        fixes_by_space = defaultdict(list)
        for fix in self.fixes:
            for space in fix.spaces:
                fixes_by_space[space].append(fix)
        groups = []
        for component in nx.connected_components(self.graph):
            if not any(space in self.roles for space in component):
                continue
            groups.append(self._group(component, links_by_space, fixes_by_space))
        return sorted(groups, key=lambda g: g.id)

    def _group(self, component, links_by_space, fixes_by_space) -> Group:
        spaces = sorted(component)
        sizes = {s: self.graph.nodes[s]["size"] for s in spaces}
        links = [link for s in spaces for link in links_by_space[s]]
        labels = _units(sizes, links)
        volume = {s: int(np.prod(self.index.shapes[s.tensor])) for s in spaces if s in self.roles}
        anchor = _anchor(spaces, labels, self.roles, volume)
        labels = _number_units_by_anchor(labels, anchor)
        fixes = list({id(f): f for s in spaces for f in fixes_by_space[s]}.values())
        return Group(
            id=f"{anchor.tensor}:{anchor.axis}",
            anchor=anchor,
            sizes=sizes,
            labels=labels,
            n_units=_unit_count(labels),
            roles={s: self.roles[s] for s in spaces if s in self.roles},
            fixes=fixes,
            blocked=self._blocked(spaces),
            kind=self._kind(spaces, sizes),
            inexact=list(dict.fromkeys(r for s in spaces for r in self.inexact.get(s, []))),
        )

    def _kind(self, spaces: list[Space], sizes: dict[Space, int]) -> str:
        """`hidden` when a normalization reduces over the group (the residual stream: not
        exact under the oracle); `head` when the group holds attention heads; `kv-group` when
        head spaces of two sizes meet (GQA/MQA: each key/value head with its query heads);
        else `channel`."""
        if any(s in self.inexact for s in spaces):
            return "hidden"
        head_sizes = {sizes[s] for s in spaces if s in self.head_spaces}
        if not head_sizes:
            return "channel"
        return "kv-group" if len(head_sizes) > 1 else "head"

    def _blocked(self, spaces: list[Space]) -> list[str]:
        """Reasons the group is not closed (deduplicated, in a stable order)."""
        reasons: list[str] = []
        index = self.index
        for space in spaces:
            reasons.extend(self.blocks.get(space, []))
            if self.graph.nodes[space]["size"] == 1:
                continue  # a 1-wide Concat or Split piece keeps its index: nothing must follow
            tensor = space.tensor
            if tensor in index.graph_inputs:
                reasons.append(f"{space} is a graph input")
            if tensor in index.graph_outputs:
                reasons.append(f"{space} is a graph output")
            orphan = tensor not in index.producer and tensor not in index.graph_inputs
            if orphan and not index.is_constant(tensor):
                reasons.append(f"{space} has no producer in the graph")
            users = list(index.consumers.get(tensor, []))
            if tensor in index.producer and not index.is_constant(tensor):
                users.append(index.producer[tensor])  # a Constant node is edited in place
            for position in users:
                if space not in self.touched.get(position, ()):
                    reasons.append(self._unhandled(position, space))
        return list(dict.fromkeys(reasons))

    def _unhandled(self, position: int, space: Space) -> str:
        node = self.index.node(position)
        label = node_label(node, position)
        inside_body = space.tensor not in node.input and space.tensor not in node.output
        control_flow = control_flow_reason(node, space, inside_body)
        if control_flow is not None:
            return f"{label}: {control_flow}"
        if rule_for(node) is None:
            return f"{label}: op {_op_name(node)} has no rule (barrier) at {space}"
        return f"{label}: its rule does not carry {space}"

    def attention_counts(self, group: Group) -> tuple[int, int | None]:
        """(query heads, key/value heads or None) of a head or kv-group group. In a kv-group,
        each unit is one key/value head with H/KV query heads, where H/KV is the ratio of the
        group's head-space sizes ([H] and [KV] unfused, [H*D] and [KV*D] fused)."""
        if group.kind == "head":
            return group.n_units, None
        sizes = [size for s, size in group.sizes.items() if s in self.head_spaces]
        return group.n_units * (max(sizes) // min(sizes)), group.n_units

    def group(self, group_id: str) -> Group:
        for group in self.groups:
            if group.id == group_id:
                return group
        raise KeyError(group_id)


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _units(sizes: dict[Space, int], links) -> dict[Space, np.ndarray]:
    """Union-find over every index of every space: returns each space's unit label per index."""
    offsets, total = {}, 0
    for space, size in sizes.items():
        offsets[space] = total
        total += size
    if links:
        a = np.concatenate([offsets[x] + ia for x, _, ia, _ in links])
        b = np.concatenate([offsets[y] + ib for _, y, _, ib in links])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    root = _connected(total, a, b)
    _, labels = np.unique(root, return_inverse=True)
    return {s: labels[offsets[s] : offsets[s] + sizes[s]] for s in sizes}


def _connected(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest member of each element's component: hook larger roots under smaller ones, then
    compress by pointer jumping, until every pair shares a root."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        low, high = np.minimum(ra, rb)[differ], np.maximum(ra, rb)[differ]
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def _anchor(
    spaces: list[Space], labels: dict[Space, np.ndarray], roles, volume: dict[Space, int]
) -> Space:
    """The space that holds the most units (every unit, when one does), preferring the largest
    produced constant with one index per unit (a conv's output rows), so that plans name
    removals as its channel indices. When Concats share inputs (a detector's neck), no space
    holds every unit: the units of a group are the union over all its spaces."""

    def rank(space: Space):
        covered = len(np.unique(labels[space]))
        one_to_one = covered == len(labels[space])
        return (
            -covered,
            not one_to_one,
            roles.get(space) != Role.OUT,
            space not in roles,
            -volume.get(space, 0),
            space,
        )

    return min(spaces, key=rank)


def _unit_count(labels: dict[Space, np.ndarray]) -> int:
    """Units of a group: the union over every space, not the units of any one space."""
    return max(int(lab.max()) for lab in labels.values()) + 1


def _number_units_by_anchor(labels: dict[Space, np.ndarray], anchor: Space):
    """Renumber units in the order they first appear along the anchor axis."""
    _, first = np.unique(labels[anchor], return_index=True)
    order = list(labels[anchor][np.sort(first)])
    n_units = _unit_count(labels)
    order += sorted(set(range(n_units)) - set(order))  # units the anchor misses go last
    mapping = np.empty(n_units, dtype=np.int64)
    mapping[order] = np.arange(n_units)
    return {s: mapping[lab] for s, lab in labels.items()}
