"""Backend selection for motorec ops: honest, explainable, never silently falling back.

Each op has an ordered list of backends (``cuda``, ``triton``, ``cpu``, ``torch``, ...). A backend has two
checks, each returning ``None`` when it can serve or a human-readable reason when it cannot:

* a *static* check, evaluated once at import from the capability flags in :mod:`motorec._ext`
  ("motorec._C built without CUDA", "triton not installed");
* an *input* check, evaluated per call on cheap metadata (device, dtype, sizes), e.g. "x is on cuda".

A backend holds its ``forward`` kernel (what the op's custom op calls) and, for ops with their own backward
kernel (``residual_quantize``), its ``backward`` kernel; a backend with no ``forward`` does not exist for that
op and says why in ``static_reason``.

``backend="auto"`` takes the first backend in order that can serve. An explicit backend (argument or the
``MOTOREC_BACKEND`` environment variable) that cannot serve raises :class:`BackendUnavailable` with every
reason; it never falls back. ``MOTOREC_BACKEND`` is either one name for every op (``MOTOREC_BACKEND=torch``)
or per-op pairs (``MOTOREC_BACKEND="residual_quantize=triton,spmm=cpu"``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")

Reason = Optional[str]


class BackendUnavailable(RuntimeError):
    """Raised when an explicitly requested backend cannot serve the given inputs."""


@dataclass
class Backend:
    name: str
    forward: Optional[Callable] = None  # the kernel the op calls; None when the backend does not exist for this op
    backward: Optional[Callable] = None  # the op's backward kernel, for ops that have one (residual_quantize)
    static_reason: Reason = None  # evaluated once, at registration
    input_check: Optional[Callable[..., Reason]] = None  # cheap per-call check on metadata
    auto_check: Optional[Callable[..., Reason]] = None  # extra reason for `auto` to pass it over (explicit use ok)
    note: str = ""  # one line for explain(): what this backend is


@dataclass
class OpDispatcher:
    op: str
    backends: Dict[str, Backend] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)

    def register(self, backend: Backend) -> None:
        if backend.name not in BACKENDS or backend.name == "auto":
            raise ValueError(f"unknown backend name {backend.name!r}")
        self.backends[backend.name] = backend
        if backend.name not in self.order:
            self.order.append(backend.name)

    def reason(self, name: str, *, auto: bool = False, **inputs) -> Reason:
        b = self.backends.get(name)
        if b is None or b.forward is None:
            return (b.static_reason if b is not None and b.static_reason else f"no {name} implementation of {self.op}")
        if b.static_reason:
            return b.static_reason
        if b.input_check is not None and inputs:
            r = b.input_check(**inputs)
            if r is not None:
                return r
        if auto and b.auto_check is not None and inputs:
            return b.auto_check(**inputs)
        return None

    def select(self, backend: Optional[str] = "auto", **inputs) -> str:
        """Resolve ``backend`` (``auto`` or a name) for these inputs; raise if an explicit one cannot serve."""
        requested = resolve_requested(self.op, backend)
        if requested == "auto":
            reasons = []
            for name in self.order:
                r = self.reason(name, auto=True, **inputs)
                if r is None:
                    return name
                reasons.append(f"{name}: {r}")
            raise BackendUnavailable(f"no backend of {self.op} can serve these inputs: " + "; ".join(reasons))
        r = self.reason(requested, **inputs)
        if r is not None:
            raise BackendUnavailable(f"backend={requested!r} cannot run {self.op}: {r}")
        return requested

    def forward(self, name: str) -> Callable:
        """The forward kernel of backend ``name`` (a name :meth:`select` returned)."""
        b = self.backends.get(name)
        if b is None or b.forward is None:
            raise BackendUnavailable(f"backend={name!r} cannot run {self.op}: no implementation")
        return b.forward

    def backward(self, name: str) -> Callable:
        """The backward kernel of backend ``name``, for ops registered with one."""
        b = self.backends.get(name)
        if b is None or b.backward is None:
            raise BackendUnavailable(f"backend={name!r} cannot run the backward of {self.op}: no implementation")
        return b.backward

    def explain(self, **inputs) -> str:
        rows = []
        for name in BACKENDS[1:]:
            r = self.reason(name, **inputs)
            status = "available" if r is None else "unavailable"
            note = self.backends[name].note if name in self.backends else ""
            rows.append((name, status, r or note or ""))
        order = " > ".join(self.order)
        auto = None
        for name in self.order:
            if self.reason(name, auto=True, **inputs) is None:
                auto = name
                break
        w = max(len(r[0]) for r in rows)
        lines = [f"motorec.ops.{self.op}: auto order {order}; auto picks {auto or 'nothing'}"
                 + (" for the given inputs" if inputs else " (before input checks)")]
        for name, status, why in rows:
            lines.append(f"  {name:<{w}}  {status:<11}  {why}")
        return "\n".join(lines)


def resolve_requested(op: str, backend: Optional[str]) -> str:
    """The backend name asked for: an explicit name wins; ``"auto"`` (or ``None``) defers to
    ``MOTOREC_BACKEND`` when it is set, else means automatic selection."""
    if backend is None or backend == "auto":
        env = os.environ.get("MOTOREC_BACKEND", "").strip()
        backend = _env_backend(op, env) if env else "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def _env_backend(op: str, env: str) -> str:
    if "=" not in env:
        name = env
    else:
        name = "auto"
        for part in env.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"MOTOREC_BACKEND: expected op=backend pairs, got {part!r} in {env!r}")
            k, v = (s.strip() for s in part.split("=", 1))
            if k == op:
                name = v
    if name not in BACKENDS:
        raise ValueError(f"MOTOREC_BACKEND must name one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_REGISTRY: Dict[str, OpDispatcher] = {}


def dispatcher(op: str) -> OpDispatcher:
    if op not in _REGISTRY:
        _REGISTRY[op] = OpDispatcher(op)
    return _REGISTRY[op]


def registered_ops() -> List[str]:
    return sorted(_REGISTRY)
