"""Plan: which units of which group go, as plain JSON that can be saved, read and replayed.

A group is named by its anchor space (`tensor:axis`), the space holding the most units; removals
are written as the anchor's indices (for a conv group, the conv's output channel numbers), so a
plan reads naturally and replays on the same graph without rescoring. When no space holds every
unit (Concats sharing inputs in a detector's neck), the units the anchor lacks are numbered after
its indices, in a fixed order (`Group.anchor_units`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
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
        """Read a plan written by `save`, its JSON checked field by field: every failure is one
        line naming the field and what it should hold. Indices are checked against the model's
        groups later, in `removals`."""
        data = _read_json(Path(path))
        try:
            return _plan_from(data)
        except PlanError as err:
            raise BadInput(f"{path} is not a usable graphprune plan: {err}") from None


# A plan lists indices of at most every unit of the model: far below this even for LLMs.
MAX_PLAN_BYTES = 256 * 2**20
PLAN_FIELDS = {
    "format": str,
    "model": str,
    "criterion": str,
    "ratio": float,
    "allocation": str,
    "groups": list,
}
GROUP_FIELDS = {"group": str, "units": int, "removed": list}
REGENERATE = "write a fresh one with `graphprune prune --plan-out`"


class PlanError(ValueError):
    """What is wrong with a plan's JSON, one line."""


def _read_json(path: Path):
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise BadInput(f"{path} is {path.stat().st_size} bytes, too large for a plan")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"no such plan file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise BadInput(f"cannot read plan {path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(
            f"{path} is not JSON ({err.msg} at line {err.lineno}); {REGENERATE}"
        ) from None
    except RecursionError:
        raise BadInput(f"{path} is nested too deeply to be a graphprune plan") from None
    except ValueError as err:  # a number of more than 4300 digits
        raise BadInput(f"{path} is not a graphprune plan ({err})") from None


def _plan_from(data) -> Plan:
    _expect_fields(data, PLAN_FIELDS, "the plan")
    if data["format"] != FORMAT:
        raise PlanError(f"format is {data['format']!r}, expected {FORMAT!r}; {REGENERATE}")
    if isinstance(data["ratio"], float) and not math.isfinite(data["ratio"]):
        raise PlanError(f"ratio is {data['ratio']}, expected a finite number")
    groups = [_group_from(entry, f"groups[{i}]") for i, entry in enumerate(data["groups"])]
    return Plan(data["model"], data["criterion"], data["ratio"], data["allocation"], groups, FORMAT)


def _group_from(entry, where: str) -> GroupRemoval:
    _expect_fields(entry, GROUP_FIELDS, where)
    if entry["units"] < 1:
        raise PlanError(f"{where}.units is {entry['units']}, expected a positive count")
    removed = entry["removed"]
    for i, index in enumerate(removed):
        if not _is_int(index) or index < 0:
            raise PlanError(
                f"{where}.removed[{i}] is {json.dumps(index)[:40]}, expected a non-negative "
                "whole number (an index along the group's anchor)"
            )
    if len(set(removed)) != len(removed):
        twice = next(index for index, count in Counter(removed).items() if count > 1)
        raise PlanError(f"{where}.removed lists index {twice} more than once")
    return GroupRemoval(entry["group"], entry["units"], list(removed))


def _expect_fields(data, fields: dict[str, type], where: str) -> None:
    """`data` is an object with exactly `fields`, each of its type (float accepts integers,
    int accepts no bools: JSON `true` is not a count)."""
    if not isinstance(data, dict):
        raise PlanError(f"{where} is {_json_type(data)}, expected an object")
    missing = [name for name in fields if name not in data]
    if missing:
        raise PlanError(f"{where} has no field '{missing[0]}'; {REGENERATE}")
    unknown = [name for name in data if name not in fields]
    if unknown:
        raise PlanError(f"{where} has an unknown field '{unknown[0][:40]}'")
    for name, kind in fields.items():
        value = data[name]
        if kind is int:
            fits = _is_int(value)
        elif kind is float:
            fits = _is_int(value) or isinstance(value, float)
        else:
            fits = isinstance(value, kind)
        if not fits:
            expected = {str: "a string", int: "a whole number", float: "a number", list: "a list"}
            raise PlanError(f"{where}: '{name}' is {_json_type(value)}, expected {expected[kind]}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value) -> str:
    """The JSON kind of a parsed value, with its article."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    return names[type(value)]


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
