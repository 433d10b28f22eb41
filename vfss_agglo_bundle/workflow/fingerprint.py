"""Fingerprints of a stage, computed from the objects its resolved config subtree built.

A stage is defined by what its config section builds (data transforms, datasets and loaders, networks, losses,
balancers, optimizers, schedules, handlers, the engine) plus a few values from outside it (seed, datalist content,
upstream stages). :func:`describe` turns all of that into plain JSON by walking the objects: every public
attribute of every object, recursively, so a setting cannot be left out by forgetting to list it. The
fingerprint is the sha256 of that JSON.

What is left out, on purpose, because it does not change a result:

- where things are: absolute paths are written relative to the roots they lie under (``<bundle_root>/...``),
  so a bundle folder can be moved or copied;
- how a run is executed or watched: ``device``, DataLoader worker settings, the rank, loggers, and every handler
  the stage's ``defines`` does not name. A stage names the handlers that change its result (learning-rate
  schedule, validation, epoch seeding, the best checkpoint's metric) in its config; the others only watch or
  persist the run (progress bars, console, TensorBoard or MLflow statistics, the resume checkpoint), ours or not,
  so adding one, as MONAI's ``--tracking`` does, leaves every fingerprint as it is;
- random states (``Randomizable.R``, generators): they are re-seeded from ``seed``, which is part of every stage;
- parameter values: a network is described by its structure, parameter shapes and ``requires_grad`` flags and
  its buffers (the initial weights follow from the seed and, in stage 2, from the stage-1 output, whose
  fingerprint is part of stage 2's); engine state (iteration counters, metrics) and private attributes.

An object met a second time (the network held by the trainer, the validator and the best-checkpoint handler) is
written as ``{"same_as": "<where it was first described>"}``.

Describe a stage's objects before its engine runs (its transforms and handlers keep per-call state).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import random
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine.events import State

__all__ = ["describe", "differences", "fingerprint"]

# attribute names whose values never change a result
IGNORED = frozenset(
    {
        "data_source",  # a sampler's dataset: described where the DataLoader holds it
        "device",
        "logger",
        "multiprocessing_context",
        "num_workers",
        "persistent_workers",
        "pin_memory",
        "pin_memory_device",
        "prefetch_factor",
        "rank",
        "timeout",
        "training",
        "worker_init_fn",
    }
)
RANDOM_STATES = (np.random.RandomState, np.random.Generator, torch.Generator, random.Random)
SKIPPED = (logging.Logger, *RANDOM_STATES)  # attribute values left out with their names
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _tensor(x: torch.Tensor | np.ndarray) -> dict[str, Any]:
    array = x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
    }


class _Describer:
    def __init__(self, roots: Mapping[str, str | os.PathLike | None]) -> None:
        absolute = {name: os.path.abspath(root) for name, root in roots.items() if root is not None}
        self.roots = sorted(absolute.items(), key=lambda kv: -len(kv[1]))  # the deepest root first
        self.seen: dict[int, str] = {}  # id of a described object -> where it was first described
        self.where: list[str] = []

    def path(self, value: str) -> str:
        for name, root in self.roots:
            if value == root or value.startswith(root + os.sep):
                return f"<{name}>{value[len(root) :]}"
        return value

    def at(self, key: str | int, obj: Any) -> Any:
        """Describe ``obj`` found under ``key`` of the object being described."""
        self.where.append(str(key))
        try:
            return self(obj)
        finally:
            self.where.pop()

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float)):
            return obj
        if isinstance(obj, str):
            return self.path(obj) if os.path.isabs(obj) else obj
        if isinstance(obj, enum.Enum):
            return f"{type(obj).__qualname__}.{obj.name}"
        if isinstance(obj, os.PathLike):
            return self.path(os.path.abspath(os.fspath(obj)))
        if isinstance(obj, torch.device):
            return "<device>"
        if isinstance(obj, (torch.dtype, np.dtype)):
            return str(obj)
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            return _tensor(obj)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, RANDOM_STATES):
            return "<random state>"
        if isinstance(obj, (bytes, bytearray)):
            return {"bytes": hashlib.sha256(obj).hexdigest()}
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
            return _qualname(obj)
        if isinstance(obj, (tuple, frozenset)):  # immutable: described where it is met, never referred to
            return self._container(obj)
        if id(obj) in self.seen:
            return {"same_as": self.seen[id(obj)]}
        self.seen[id(obj)] = ".".join(self.where) or "<root>"
        return self._container(obj)

    def _container(self, obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {str(k): self.at(k, v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.at(i, v) for i, v in enumerate(obj)]
        if isinstance(obj, (set, frozenset)):
            return sorted((self(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, default=str))
        if isinstance(obj, functools.partial):
            return {"partial": self(obj.func), "args": self.at("args", obj.args), "keywords": self(obj.keywords)}
        if isinstance(obj, State):
            return {"max_epochs": obj.max_epochs, "epoch_length": obj.epoch_length}
        if isinstance(obj, torch.nn.Module):
            return self._module(obj)
        if isinstance(obj, torch.optim.Optimizer):
            return self._optimizer(obj)
        if hasattr(obj, "__dict__"):
            return {"class": _qualname(type(obj)), **self._attributes(obj)}
        return {"class": _qualname(type(obj)), "repr": _ADDRESS.sub("", repr(obj))}

    def _attributes(self, obj: Any) -> dict[str, Any]:
        return {
            key: self.at(key, value)
            for key, value in sorted(vars(obj).items())
            if not key.startswith("_") and key not in IGNORED and not isinstance(value, SKIPPED)
        }

    def _module(self, module: torch.nn.Module) -> dict[str, Any]:
        return {
            "class": _qualname(type(module)),
            **self._attributes(module),
            "parameters": {
                name: [list(p.shape), str(p.dtype), p.requires_grad]
                for name, p in module.named_parameters(recurse=False)
            },
            "buffers": {name: _tensor(b) for name, b in module.named_buffers(recurse=False)},
            "children": {name: self.at(name, child) for name, child in module.named_children()},
        }

    def _optimizer(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        groups = []
        for i, group in enumerate(optimizer.param_groups):
            self.where.append(f"param_groups.{i}")
            try:
                hyper = {key: self.at(key, value) for key, value in sorted(group.items()) if key != "params"}
            finally:
                self.where.pop()
            groups.append({**hyper, "params": [[list(p.shape), p.requires_grad] for p in group["params"]]})
        return {
            "class": _qualname(type(optimizer)),
            "defaults": self.at("defaults", optimizer.defaults),
            "param_groups": groups,
        }


def describe(obj: Any, roots: Mapping[str, str | os.PathLike | None] | None = None) -> Any:
    """Plain JSON describing ``obj`` and everything it holds that can change a result (see the module docstring).

    Args:
        obj: any object: a mapping of the components that define a stage, an engine, a transform, ...
        roots: name -> folder; absolute paths under a folder are written ``<name>/relative/path``.
    """
    return _Describer(roots or {})(obj)


def fingerprint(description: Any) -> str:
    """sha256 of a description's canonical JSON."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def differences(old: Any, new: Any, path: str = "", limit: int = 8) -> list[str]:
    """Where two descriptions differ, as ``"a.b.0.c: old -> new"`` lines (at most ``limit``)."""
    found: list[str] = []
    _diff(old, new, path, found, limit)
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _diff(old: Any, new: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit or old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else key
            if key not in old or key not in new:
                found.append(f"{where}: {'added' if key not in old else 'removed'}")
            else:
                _diff(old[key], new[key], where, found, limit)
            if len(found) >= limit:
                return
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{path}.{i}" if path else str(i), found, limit)
    else:
        found.append(f"{path or '<root>'}: {_short(old)} -> {_short(new)}")
