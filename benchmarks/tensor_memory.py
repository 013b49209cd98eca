"""Live tensor bytes of a training step, as an allocator sees them, on any device.

:class:`TensorMemoryTracker` is a ``TorchDispatchMode``: every aten op goes through it,
and every output tensor whose storage is new (not the storage of an input: views,
in-place and ``out=`` ops allocate nothing) is an allocation of
``storage.nbytes()`` bytes. A weak reference on the storage object logs its free (torch
keeps one Python object per storage, alive exactly as long as the storage). Live bytes
are

.. math::

    M(t) = M_0 + \\sum_{\\text{alloc } a \\le t} n_a - \\sum_{\\text{free } f \\le t} n_f,
    \\qquad \\text{peak} = \\max_t M(t),

with :math:`M_0` the bytes registered before the step (weights, buffers, optimizer
state, the batch). Neither RSS nor a caching allocator's reserve enters it: it is what
``torch.cuda.max_memory_allocated`` counts on a GPU, less the 512-byte rounding.

Every allocation is tagged with the phase (``forward``, ``backward``, ``optimizer``),
the innermost *component* module running (forward hooks; they also fire when an
activation-checkpointed block is recomputed in backward), the op, shape and dtype.
After the step the event log is replayed to find the exact peak and the allocations
live there, so the breakdown is that of the peak itself:

* ``weights``/``buffers``/``optimizer state`` registered before the step;
* ``gradients``: storages that became a parameter's ``.grad`` (post-accumulate hook);
* ``optimizer state``: allocated in the optimizer phase and still alive at the end;
* ``activations/<component>``: allocated in forward, alive at the peak (saved for
  backward, or not yet freed);
* ``backward/<component>``: backward's working set (recomputed activations, input
  gradients, temporaries), by the component being recomputed where there is one.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemoryTracker"]


class TensorMemoryTracker(TorchDispatchMode):
    """Count live tensor-storage bytes through the dispatcher (see the module docstring).

    Args:
        components: ``name -> module``; allocations made while a module's forward runs
            are attributed to the innermost such module (others go to ``other``).
    """

    def __init__(self, components: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__()
        self.phase = "setup"
        self._stack: list[str] = []
        self._records: list[dict[str, Any]] = []  # one per storage ever tracked
        self._events: list[tuple[int, int]] = []  # (record id, +bytes / -bytes)
        self._live: dict[int, int] = {}  # id(storage) -> record id
        self._refs: dict[int, weakref.ref] = {}
        self._handles: list[Any] = []
        self.baseline: dict[str, int] = defaultdict(int)
        for name, module in (components or {}).items():
            self._handles.append(module.register_forward_pre_hook(
                lambda m, a, name=name: self._stack.append(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stack.pop()

    # ------------------------------------------------------------- registration
    def register_existing(self, tensors: Iterable[torch.Tensor], category: str) -> int:
        """Count storages that exist before the step as ``category``; returns their bytes."""
        added = 0
        for t in _dense_parts(tensors):
            st = t.untyped_storage()
            if id(st) in self._live or st.nbytes() == 0:
                continue
            self._track(st, {"category": category, "phase": "before", "component": "-",
                             "op": "-", "shape": tuple(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
            added += st.nbytes()
        self.baseline[category] += added
        return added

    def track_gradients(self, model: nn.Module) -> None:
        """Tag each trainable parameter's ``.grad`` storage as ``gradients`` once accumulated."""
        for p in model.parameters():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._mark_grad))

    def _mark_grad(self, p: torch.Tensor) -> None:
        rid = self._live.get(id(p.grad.untyped_storage()))
        if rid is not None:
            self._records[rid]["category"] = "gradients"

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------- tracking
    def _track(self, st: torch.UntypedStorage, record: dict[str, Any]) -> None:
        rid = len(self._records)
        record["nbytes"] = st.nbytes()
        self._records.append(record)
        key = id(st)
        self._live[key] = rid
        self._events.append((rid, record["nbytes"]))

        def freed(_ref: weakref.ref, key: int = key, rid: int = rid) -> None:
            self._live.pop(key, None)
            self._refs.pop(key, None)
            self._events.append((rid, -self._records[rid]["nbytes"]))

        self._refs[key] = weakref.ref(st, freed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and _has_storage(t)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or not _has_storage(t):
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self._live:  # resized in place (out=, resize_): log the change
                rec = self._records[self._live[key]]
                if st.nbytes() != rec["nbytes"]:
                    self._events.append((self._live[key], st.nbytes() - rec["nbytes"]))
                    rec["nbytes"] = st.nbytes()
                continue
            if key in inputs or st.nbytes() == 0:
                continue
            self._track(st, {"category": None, "phase": self.phase,
                             "component": self._stack[-1] if self._stack else "other",
                             "op": str(func.overloadpacket.__name__), "shape": tuple(t.shape),
                             "dtype": str(t.dtype).removeprefix("torch.")})
        return out

    # ------------------------------------------------------------- report
    def _category(self, rid: int) -> str:
        rec = self._records[rid]
        if rec["category"] is not None:
            return rec["category"]
        return f"{'activations' if rec['phase'] == 'forward' else rec['phase']}/{rec['component']}"

    def report(self, top: int = 15) -> dict[str, Any]:
        """Peak live bytes, per-phase peaks, and the breakdown and top allocations at the peak.

        Returns:
            ``peak_bytes``, ``baseline_bytes`` (by category), ``peak_by_phase``,
            ``at_peak`` (``by_category`` bytes, sorted) and ``top_allocations`` (the
            ``top`` largest groups of same op/shape/dtype/category live at the peak).
        """
        live_now = set(self._live.values())
        total, peak, peak_at = 0, -1, 0
        phase_peak: dict[str, int] = defaultdict(int)
        for i, (rid, delta) in enumerate(self._events):
            total += delta
            phase = self._records[rid]["phase"] if delta > 0 else None
            if phase:
                phase_peak[phase] = max(phase_peak[phase], total)
            if total > peak:
                peak, peak_at = total, i
        sizes: dict[int, int] = {}
        for rid, delta in self._events[: peak_at + 1]:
            sizes[rid] = sizes.get(rid, 0) + delta
        alive = [rid for rid, n in sizes.items() if n > 0]
        cats: dict[int, str] = {}
        for rid in alive:
            rec = self._records[rid]
            if rec["category"] is None and rec["phase"] == "optimizer":
                cats[rid] = "optimizer state" if rid in live_now else "optimizer temporaries"
            else:
                cats[rid] = self._category(rid)
        by_category: dict[str, int] = defaultdict(int)
        groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for rid in alive:
            rec = self._records[rid]
            by_category[cats[rid]] += sizes[rid]
            g = groups[(cats[rid], rec["op"], rec["shape"], rec["dtype"])]
            g[0] += 1
            g[1] += sizes[rid]
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]
        return {
            "peak_bytes": peak,
            "baseline_bytes": dict(self.baseline),
            "peak_by_phase": dict(phase_peak),
            "peak_phase": self._records[self._events[peak_at][0]]["phase"] if self._events else None,
            "at_peak": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_allocations": [
                {"category": c, "op": op, "shape": list(shape), "dtype": dtype, "count": n, "bytes": b}
                for (c, op, shape, dtype), (n, b) in ranked],
        }


def _dense_parts(tensors: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    """The tensors, with a wrapper subclass (e.g. torchao's NF4 weights) replaced by the
    inner tensors that hold its bytes (``__tensor_flatten__``)."""
    for t in tensors:
        if is_traceable_wrapper_subclass(t):
            names, _ = t.__tensor_flatten__()
            yield from _dense_parts([getattr(t, n) for n in names])
        else:
            yield t


def _has_storage(t: torch.Tensor) -> bool:
    """A dense tensor with a real storage (not meta, sparse or a wrapper subclass)."""
    if t.layout != torch.strided or t.is_meta:
        return False
    try:
        t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return False
    return True
