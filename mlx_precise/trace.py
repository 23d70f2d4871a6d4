"""Divergence tracer: run a PyTorch model and its MLX port side by side and find the first
site where their values part beyond rounding.

    report = mlx_precise.trace.compare(torch_model, mlx_model, (ids_t,), (ids_m,))
    print(report.to_markdown())
    print(report.first_divergence(1e-4))

Sites are the outputs of every MLX submodule call (``mlx.nn.Module`` children, matched to
the torch submodule of the same name, or of the name ``name_map`` gives), in the order the
calls finish, plus any op sites a model-specific ``op_sites`` function adds (see
``m2bert.tracing``). Per site: the relative L2 error of the MLX value against the torch
value, the largest distance in units in the last place of the MLX dtype, the fraction of
bit-equal elements, and the error the site *added*: the MLX site run again on the torch
side's inputs, against the torch output. The torch side is the reference; run it in
float64 (``.double()``) to measure the MLX side against a reference far below float32
rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn
import numpy as np

__all__ = ["Call", "Captures", "OpSite", "Site", "TraceReport", "compare"]


@dataclass
class Call:
    """One call of a module: its positional and keyword arguments and its output."""

    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    output: Any


@dataclass
class OpSite:
    """A site that is not a module call (an elementwise op inside a module, say).

    ``after``: the (MLX module name, call index) this op follows in the report.
    ``added``: recomputes the MLX op from the torch side's inputs (an MLX array), or None.
    """

    name: str
    mlx_value: Any
    torch_value: Any
    after: Tuple[str, int]
    added: Optional[Callable[[], Any]] = None


@dataclass
class Captures:
    """Every module call of both runs, by module name, in call order per name."""

    mlx: Dict[str, List[Call]]
    torch: Dict[str, List[Call]]


@dataclass
class Site:
    name: str
    torch_name: str
    shape: Tuple[int, ...]
    relative_l2: float
    max_ulp: int
    bit_equal: float
    added: Optional[float]
    kind: str = "module"  # "module" or "op"

    @property
    def local_error(self) -> float:
        """The error this site added if known, else the error of its output."""
        return self.relative_l2 if self.added is None else self.added


@dataclass
class TraceReport:
    sites: List[Site]
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (site, why)

    def first_divergence(self, budget: float) -> Optional[Site]:
        """The first site whose added error (its output error where that is unknown) is
        above ``budget`` (a relative L2 error) or NaN; None if every site is within it."""
        for site in self.sites:
            error = site.local_error
            if math.isnan(error) or error > budget:
                return site
        return None

    def to_markdown(self, budget: Optional[float] = None) -> str:
        lines = [
            "| # | site | shape | relative L2 | max ULP | bit-equal | added |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for index, site in enumerate(self.sites):
            added = "" if site.added is None else f"{site.added:.2e}"
            base = site.name.split("#")[0]
            name = site.name if base == site.torch_name or site.kind == "op" else \
                f"{site.name} (torch: {site.torch_name or '<root>'})"
            lines.append(
                f"| {index} | `{name or '<root>'}` | {'x'.join(map(str, site.shape))} | "
                f"{site.relative_l2:.2e} | {site.max_ulp} | {100 * site.bit_equal:.1f}% | "
                f"{added} |")
        if budget is not None:
            first = self.first_divergence(budget)
            lines.append("")
            lines.append(f"first divergence (budget {budget:g}): "
                         + (f"`{first.name}`" if first else "none"))
        if self.skipped:
            lines.append("")
            lines.append("Not compared: " + "; ".join(f"`{n or '<root>'}` ({why})"
                                                      for n, why in self.skipped))
        return "\n".join(lines) + "\n"

    def plot(self, path, budget: Optional[float] = None) -> None:
        """PNG of the output error and the added error of every site, in order."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        floor = 1e-12  # bit-equal sites sit on the floor of the log axis
        depth = np.arange(len(self.sites))
        output_error = [max(site.relative_l2, floor) for site in self.sites]
        figure, axes = plt.subplots(figsize=(max(8, len(self.sites) / 6), 4.5))
        axes.semilogy(depth, output_error, "-", color="tab:blue", label="output error")
        added = [(i, max(s.added, floor)) for i, s in enumerate(self.sites) if s.added is not None]
        if added:
            axes.semilogy(*zip(*added), ".", color="tab:red", label="added by the site")
        if budget is not None:
            axes.axhline(budget, color="gray", linestyle="--", label=f"budget {budget:g}")
            first = self.first_divergence(budget)
            if first is not None:
                index = self.sites.index(first)
                axes.annotate(first.name, (index, max(first.local_error, floor)),
                              textcoords="offset points", xytext=(5, 10), fontsize=8)
        axes.set_xlabel("site (call order)")
        axes.set_ylabel("relative L2 vs torch")
        axes.set_title("MLX vs PyTorch, per site")
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


# ---------------------------------------------------------------- values and metrics

def _arrays(value, is_array: Callable[[Any], bool]) -> List[Any]:
    """The arrays in a (nested) output, in order; None and other values are dropped."""
    if is_array(value):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [array for item in value for array in _arrays(item, is_array)]
    return []


def _torch_arrays(value) -> List[Any]:
    import torch

    return _arrays(value, lambda item: isinstance(item, torch.Tensor))


def _mlx_arrays(value) -> List[mx.array]:
    return _arrays(value, lambda item: isinstance(item, mx.array))


def _torch_to_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().resolve_conj().numpy()


def _ordered_bits(values: np.ndarray) -> np.ndarray:
    """Integers that order like the floats, one apart for adjacent floats."""
    signed = {2: np.int16, 4: np.int32, 8: np.int64}[values.dtype.itemsize]
    bits = values.view(signed).astype(np.int64)
    magnitude = bits & np.int64((1 << (8 * values.dtype.itemsize - 1)) - 1)
    return np.where(bits < 0, -magnitude, magnitude)


def _relative_l2(value: np.ndarray, reference: np.ndarray) -> float:
    difference = np.linalg.norm((value.astype(np.float64) - reference.astype(np.float64)).ravel())
    norm = np.linalg.norm(reference.astype(np.float64).ravel())
    if norm == 0:
        return 0.0 if difference == 0 else math.inf
    return float(difference / norm)


def _metrics(mlx_value: np.ndarray, torch_value: np.ndarray) -> Tuple[float, int, float]:
    """relative L2 (float64), max ULP distance and bit-equal fraction in the MLX dtype."""
    if mlx_value.size == 0:
        return 0.0, 0, 1.0
    if np.iscomplexobj(mlx_value) or np.iscomplexobj(torch_value):
        mlx_value = np.stack([mlx_value.real, mlx_value.imag], axis=-1)
        torch_value = np.stack([np.real(torch_value), np.imag(torch_value)], axis=-1)
    if not np.issubdtype(mlx_value.dtype, np.floating):
        equal = mlx_value == torch_value
        return (0.0 if equal.all() else 1.0), int((~equal).sum()), float(equal.mean())
    reference = torch_value.astype(mlx_value.dtype)  # the torch value rounded to the MLX dtype
    with np.errstate(invalid="ignore", over="ignore"):
        relative = _relative_l2(mlx_value, torch_value)
    if np.isnan(mlx_value).any() or np.isnan(torch_value).any():
        relative = math.nan
    ulps = np.abs(_ordered_bits(mlx_value) - _ordered_bits(reference))
    bits_equal = mlx_value.view(f"u{mlx_value.dtype.itemsize}") == \
        reference.view(f"u{reference.dtype.itemsize}")
    return relative, int(ulps.max()), float(bits_equal.mean())


def _as_mlx_like(tensor, like: mx.array) -> mx.array:
    """A torch tensor as an MLX array of ``like``'s dtype (the site's own input dtype)."""
    array = mx.array(_torch_to_numpy(tensor))
    return array if array.dtype == like.dtype else array.astype(like.dtype)


# ---------------------------------------------------------------- capture

def _record_torch_calls(module, run: Callable[[], Any]) -> Dict[str, List[Call]]:
    """Forward hooks on every named submodule (shared modules once, by their first name)."""
    import torch

    calls: Dict[str, List[Call]] = {}
    handles = []
    for name, submodule in module.named_modules():
        def hook(_, args, kwargs, output, name=name):
            calls.setdefault(name, []).append(Call(tuple(args), dict(kwargs), output))

        handles.append(submodule.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


_TRACED_CLASSES: Dict[type, type] = {}


def _traced_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` records the call in the instance's log."""
    if cls not in _TRACED_CLASSES:
        def __call__(self, *args, **kwargs):
            output = cls.__call__(self, *args, **kwargs)
            log, names = self.__dict__["_trace_log"]
            log.append((names, Call(args, kwargs, output)))
            return output

        _TRACED_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
    return _TRACED_CLASSES[cls]


def _record_mlx_calls(module: mlx.nn.Module,
                      run: Callable[[], Any]) -> List[Tuple[List[str], Call]]:
    """Every call of every submodule that defines ``__call__``, with every name of the
    module (a shared module has several), in the order the calls finish (the class of each
    instance is swapped for a recording subclass meanwhile)."""
    log: List[Tuple[List[str], Call]] = []
    names: Dict[int, List[str]] = {}
    swapped = []
    for name, submodule in reversed(module.named_modules()):  # reversed: definition order
        cls = type(submodule)
        if not any("__call__" in klass.__dict__ for klass in cls.__mro__ if klass is not object):
            continue  # a parameter holder or marker: never called
        if id(submodule) in names:
            names[id(submodule)].append(name)
            continue
        names[id(submodule)] = [name]
        submodule.__dict__["_trace_log"] = (log, names[id(submodule)])
        object.__setattr__(submodule, "__class__", _traced_class(cls))
        swapped.append((submodule, cls))
    try:
        run()
    finally:
        for submodule, cls in swapped:
            object.__setattr__(submodule, "__class__", cls)
            del submodule.__dict__["_trace_log"]
    return log


# ---------------------------------------------------------------- compare

NameMap = Union[Mapping[str, Any], Callable[[str], Any], None]


def _resolve_name(name_map: NameMap, mlx_name: str):
    """(torch name, transform of the torch output or None), or None to skip the site."""
    if name_map is None:
        target = mlx_name
    elif callable(name_map):
        target = name_map(mlx_name)
    else:
        target = name_map.get(mlx_name, mlx_name)
    if target is None:
        return None
    return (target, None) if isinstance(target, str) else tuple(target)


def _substituted_inputs(mlx_call: Call, torch_call: Call):
    """The MLX call's arguments with each array replaced, in order, by the torch call's
    positional tensor of the same shape; None when the arrays do not line up."""
    import torch

    torch_tensors = [a for a in torch_call.args if isinstance(a, torch.Tensor)]
    mlx_positions = [i for i, a in enumerate(mlx_call.args) if isinstance(a, mx.array)]
    if len(torch_tensors) < len(mlx_positions):
        return None
    args = list(mlx_call.args)
    for position, tensor in zip(mlx_positions, torch_tensors):
        if tuple(tensor.shape) != tuple(args[position].shape):
            return None
        args[position] = _as_mlx_like(tensor, args[position])
    return args


def _site(name, torch_name, mlx_value, torch_value, added_value, kind, skipped):
    mlx_arrays, torch_arrays = _mlx_arrays(mlx_value), _torch_arrays(torch_value)
    if len(mlx_arrays) != len(torch_arrays) or not mlx_arrays:
        skipped.append((name, f"{len(mlx_arrays)} MLX arrays vs {len(torch_arrays)} torch"))
        return None
    if any(tuple(m.shape) != tuple(t.shape) for m, t in zip(mlx_arrays, torch_arrays)):
        shapes = ", ".join(f"{tuple(m.shape)} vs {tuple(t.shape)}"
                           for m, t in zip(mlx_arrays, torch_arrays))
        skipped.append((name, f"shapes differ: {shapes}"))
        return None
    mx.eval(mlx_arrays)
    mlx_flat = np.concatenate([np.asarray(a).ravel() for a in mlx_arrays])
    torch_flat = np.concatenate([_torch_to_numpy(t).ravel() for t in torch_arrays])
    relative, max_ulp, bit_equal = _metrics(mlx_flat, torch_flat)
    added = None
    if added_value is not None:
        added_arrays = _mlx_arrays(added_value)
        if len(added_arrays) == len(torch_arrays):
            mx.eval(added_arrays)
            added_flat = np.concatenate([np.asarray(a).ravel() for a in added_arrays])
            added = _metrics(added_flat, torch_flat)[0]
    return Site(name, torch_name, tuple(mlx_arrays[0].shape), relative, max_ulp, bit_equal,
                added, kind)


def compare(
    torch_module,
    mlx_module: mlx.nn.Module,
    torch_inputs: Sequence[Any],
    mlx_inputs: Sequence[Any],
    *,
    name_map: NameMap = None,
    op_sites: Optional[Callable[[Captures], List[OpSite]]] = None,
) -> TraceReport:
    """Run both models once on their inputs and compare them site by site.

    Args:
        torch_module: a ``torch.nn.Module`` (the reference side).
        mlx_module: its ``mlx.nn.Module`` port.
        torch_inputs, mlx_inputs: positional arguments of each model (a single array is
            taken as one argument).
        name_map: MLX submodule name -> torch submodule name (a dict, or a function
            returning the name); a value may be ``(torch name, transform)``, where
            ``transform`` maps the torch output onto the MLX layout, or None to leave the
            site out. Names missing from a dict map to themselves. The root is ``""``.
        op_sites: a function of the ``Captures`` of both runs returning extra ``OpSite``s
            (ops inside modules); ``m2bert.tracing`` has M2-BERT's.

    Returns:
        a ``TraceReport``: ``.sites`` in the order the MLX calls finish.
    """
    import torch

    torch_args = (torch_inputs,) if isinstance(torch_inputs, torch.Tensor) else tuple(torch_inputs)
    mlx_args = (mlx_inputs,) if isinstance(mlx_inputs, mx.array) else tuple(mlx_inputs)
    torch_calls = _record_torch_calls(torch_module, lambda: torch_module(*torch_args))
    mlx_log = _record_mlx_calls(mlx_module, lambda: mlx_module(*mlx_args))
    mlx_calls: Dict[str, List[Call]] = {}
    ordered: List[Tuple[str, int]] = []
    for names, call in mlx_log:
        # a shared module: the first of its names the torch side knows
        name = next((n for n in names if (_resolve_name(name_map, n) or ("",))[0]
                     in torch_calls), names[0])
        ordered.append((name, len(mlx_calls.setdefault(name, []))))
        mlx_calls[name].append(call)
    mx.eval([a for _, call in mlx_log for a in _mlx_arrays(call.output)])

    extra: Dict[Tuple[str, int], List[OpSite]] = {}
    if op_sites is not None:
        for op in op_sites(Captures(mlx_calls, torch_calls)):
            extra.setdefault(op.after, []).append(op)

    sites: List[Site] = []
    skipped: List[Tuple[str, str]] = []
    for name, index in ordered:
        resolved = _resolve_name(name_map, name)
        if resolved is not None:
            torch_name, transform = resolved
            torch_list = torch_calls.get(torch_name, [])
            if index < len(torch_list):
                mlx_call, torch_call = mlx_calls[name][index], torch_list[index]
                torch_output = torch_call.output if transform is None else \
                    transform(torch_call.output)
                inputs = _substituted_inputs(mlx_call, torch_call)
                if inputs is None:
                    added = None
                elif all(new is old or mx.array_equal(new, old).item()
                         for new, old in zip(inputs, mlx_call.args)):
                    added = mlx_call.output  # the same inputs (token ids, say): no re-run
                else:
                    added = _submodule(mlx_module, name)(*inputs, **mlx_call.kwargs)
                label = name if len(mlx_calls[name]) == 1 else f"{name}#{index}"
                site = _site(label, torch_name, mlx_call.output, torch_output, added,
                             "module", skipped)
                if site is not None:
                    sites.append(site)
        for op in extra.get((name, index), []):
            site = _site(op.name, op.name, op.mlx_value, op.torch_value,
                         None if op.added is None else op.added(), "op", skipped)
            if site is not None:
                sites.append(site)
    return TraceReport(sites, skipped)


def _submodule(module: mlx.nn.Module, name: str) -> mlx.nn.Module:
    for part in name.split(".") if name else []:
        module = module[int(part)] if isinstance(module, list) else module[part]
    return module
