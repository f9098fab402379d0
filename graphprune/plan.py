"""Plan: which units of which group go, as plain JSON that can be saved, read and replayed.

A group is named by its anchor space (`tensor:axis`), a space that holds every unit; removals
are written as the anchor's indices (for a conv group, the conv's output channel numbers), so a
plan reads naturally and replays on the same graph without rescoring. When no space holds every
unit (Concats sharing inputs in a detector's neck), the units the anchor lacks are numbered after
its indices, in a fixed order (`Group.anchor_units`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphprune.depgraph import DepGraph
from graphprune.errors import BadInput

FORMAT = "graphprune.plan/1"


@dataclass
class GroupRemoval:
    group: str
    units: int
    removed: list[int]  # anchor indices, one per removed unit (see Group.anchor_units)


@dataclass
class Plan:
    model: str  # fingerprint of the graph the plan was made for
    criterion: str
    ratio: float
    allocation: str
    groups: list[GroupRemoval] = field(default_factory=list)
    format: str = FORMAT

    @classmethod
    def from_removals(
        cls,
        dep: DepGraph,
        removals: dict[str, np.ndarray],
        fingerprint: str,
        criterion: str,
        ratio: float,
        allocation: str,
    ) -> Plan:
        groups = []
        for group_id in sorted(removals):
            group = dep.group(group_id)
            anchors = group.first_anchor_index(np.sort(removals[group_id]))
            groups.append(GroupRemoval(group_id, group.n_units, sorted(int(a) for a in anchors)))
        return cls(fingerprint, criterion, ratio, allocation, groups)

    def removals(self, dep: DepGraph) -> dict[str, np.ndarray]:
        """Units to remove per group, checked against `dep`'s groups."""
        result = {}
        for entry in self.groups:
            try:
                group = dep.group(entry.group)
            except KeyError:
                raise BadInput(
                    f"plan names group '{entry.group}', which this model does not have"
                ) from None
            if not group.prunable:
                raise BadInput(
                    f"plan prunes group '{entry.group}', which is blocked: {group.blocked[0]}"
                )
            if group.n_units != entry.units:
                raise BadInput(
                    f"plan expects {entry.units} units in group '{entry.group}', "
                    f"the model has {group.n_units}"
                )
            if any(not 0 <= i < group.plan_index_count for i in entry.removed):
                raise BadInput(f"plan removes an index outside group '{entry.group}'")
            units = group.anchor_units(entry.removed)
            emptied = [s for s, lab in group.labels.items() if np.isin(lab, units).all()]
            if emptied:
                raise BadInput(f"plan would empty {emptied[0]} in group '{entry.group}'")
            result[entry.group] = units
        return result

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, atomically (graphprune.outputs.write_text)."""
        from graphprune.outputs import write_text

        write_text(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            data["groups"] = [GroupRemoval(**g) for g in data["groups"]]
            return cls(**data)
        except FileNotFoundError:
            raise BadInput(f"no such plan file: {path}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise BadInput(f"{path} is not a graphprune plan ({err})") from None


def fingerprint(model: onnx.ModelProto) -> str:
    """A hash of the graph's structure and constant shapes (not values, not file layout)."""
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(
            f"{node.domain}:{node.op_type}:{list(node.input)}:{list(node.output)}\n".encode()
        )
    for tensor in model.graph.initializer:
        digest.update(f"{tensor.name}:{list(tensor.dims)}:{tensor.data_type}\n".encode())
    return digest.hexdigest()[:16]
