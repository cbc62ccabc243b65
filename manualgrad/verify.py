"""Side-by-side verification of the hand-derived gradients, as a library.

For the same parameters and inputs, every path (probs, logits, loss with class indices,
loss with probability targets) is computed twice: by manualgrad's Functions and by the
native-autograd twin in :mod:`manualgrad.reference`. Values first, then every gradient
(x, W1, b1, W2, b2), each with its max absolute error, max relative error (normwise:
max |a - b| / max |b|), bit-exactness and a pass/fail against tolerances suited to the dtype.
Then: the numpy twin as a third witness, ``torch.autograd.gradcheck`` and
``gradgradcheck`` in float64, and, when CUDA is present, CPU against CUDA on the same weights.

``python -m manualgrad verify`` prints the report; :func:`verify` returns it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import functional, reference

# loss, loss_soft: class-index and probability targets, gradients computed in backward (the
# default below functional.PRECOMPUTE_MIN_ROWS rows); loss_in_fwd, soft_in_fwd: the same with the
# gradients computed in the forward pass, in three chunks of rows (the default for large batches)
PATHS = ("probs", "logits", "loss", "loss_soft", "loss_in_fwd", "soft_in_fwd")
GRADIENT_NAMES = ("x", "W1", "b1", "W2", "b2")
DTYPES = {"float64": torch.float64, "float32": torch.float32}

# (rtol, atol) for comparing manualgrad against autograd: torch.testing.assert_close's
# defaults for float64; float32 allows for the different summation order of a batch sum.
TOLERANCES = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-5, 1e-6)}
# CPU against CUDA: different kernels, so different rounding, even in float64.
CROSS_DEVICE_TOLERANCES = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-4, 1e-5)}
GRADCHECK_BATCH, GRADCHECK_HIDDEN = 4, 16


@dataclass
class Comparison:
    """One quantity computed two ways: ``candidate`` (manualgrad) against ``baseline``."""

    section: str
    device: str
    dtype: str
    path: str
    quantity: str
    max_abs: float
    max_rel: float
    bit_exact: bool
    rtol: float
    atol: float
    passed: bool


@dataclass
class Check:
    """A named check with a pass/fail/skipped status (gradcheck, gradgradcheck, ...)."""

    section: str
    device: str
    path: str
    check: str
    status: str  # "pass", "fail" or "skipped"
    detail: str = ""


@dataclass
class Report:
    settings: dict[str, object]
    comparisons: list[Comparison] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(not c.passed for c in self.comparisons) + sum(c.status == "fail" for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.failures == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "settings": self.settings,
            "passed": self.passed,
            "failures": self.failures,
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


# ----------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------


def compare(section, device, dtype, path, quantity, candidate: Tensor, baseline: Tensor, tolerances) -> Comparison:
    """Compare two tensors elementwise: |a - b| <= atol + rtol |b| everywhere (and same NaNs)."""
    rtol, atol = tolerances[baseline.dtype]
    a, b = candidate.detach().to("cpu", torch.float64), baseline.detach().to("cpu", torch.float64)
    same_shape = a.shape == b.shape
    if same_shape and a.numel() > 0:
        diff = (a - b).abs()
        max_abs = float(diff.max())
        scale = float(b.abs().max())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        passed = bool(torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True).all())
        bit_exact = bool(torch.equal(candidate.detach().cpu(), baseline.detach().cpu()))
    else:
        max_abs = max_rel = 0.0 if same_shape else float("inf")
        passed = bit_exact = same_shape
    return Comparison(
        section, device, _dtype_name(baseline.dtype), path, quantity, max_abs, max_rel, bit_exact, rtol, atol, passed
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Problem:
    """Parameters, input, targets and an upstream gradient, all float64 on the CPU."""

    params: tuple[Tensor, Tensor, Tensor, Tensor]
    x: Tensor
    target: Tensor
    soft_target: Tensor
    grad_out: Tensor

    @classmethod
    def make(cls, batch: int, hidden: int, seed: int, in_features: int = 2, out_features: int = 2) -> Problem:
        from .module import TwoLayerNet

        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = TwoLayerNet(in_features, hidden, out_features, dtype=torch.float64)
        params = tuple(p.detach() for p in (net.W1, net.b1, net.W2, net.b2))
        x = torch.randn(batch, in_features, dtype=torch.float64, generator=generator)
        target = torch.randint(0, out_features, (batch,), generator=generator)
        soft = torch.softmax(torch.randn(batch, out_features, dtype=torch.float64, generator=generator), 1)
        grad_out = torch.randn(batch, out_features, dtype=torch.float64, generator=generator)
        return cls(params, x, target, soft, grad_out)  # type: ignore[arg-type]

    def to(self, device: str, dtype: torch.dtype) -> Problem:
        move = lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
        return Problem(
            tuple(map(move, self.params)), move(self.x), move(self.target), move(self.soft_target), move(self.grad_out)
        )  # type: ignore[arg-type]


def path_functions(path: str, problem: Problem) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(manualgrad, autograd twin) for one path, as functions of (x, W1, b1, W2, b2)."""
    if path == "probs":
        return functional.two_layer_net, reference.probs
    if path == "logits":
        return functional.two_layer_net_logits, reference.logits
    target = problem.soft_target if path in ("loss_soft", "soft_in_fwd") else problem.target
    in_forward = path.endswith("in_fwd")

    def manual(x: Tensor, *params: Tensor) -> Tensor:
        chunk_rows = x.shape[0] // 3 + 1 if in_forward else None
        with functional.loss_gradients_in_forward(in_forward, chunk_rows):
            return functional.two_layer_net_loss(x, target, *params)

    return manual, lambda x, *p: reference.loss(x, target, *p)


def evaluate(fn: Callable[..., Tensor], problem: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Value and the gradients of (value * upstream).sum() w.r.t. x and the parameters."""
    inputs = [t.detach().clone().requires_grad_() for t in (problem.x, *problem.params)]
    value = fn(*inputs)
    grad_out = problem.grad_out if value.dim() == 2 else torch.ones_like(value)
    grads = torch.autograd.grad(value, inputs, grad_out)
    return value.detach(), grads


def compare_with_autograd(problem: Problem, device: str, dtype: torch.dtype) -> list[Comparison]:
    rows = []
    local = problem.to(device, dtype)
    for path in PATHS:
        manual, twin = path_functions(path, local)
        value, grads = evaluate(manual, local)
        ref_value, ref_grads = evaluate(twin, local)
        for quantity, a, b in zip(("value", *GRADIENT_NAMES), (value, *grads), (ref_value, *ref_grads)):
            rows.append(compare("autograd", device, dtype, path, quantity, a, b, TOLERANCES))
    return rows


def compare_with_numpy(problem: Problem) -> list[Comparison]:
    """The mean loss and its gradients against the plain-numpy twin, float64 on the CPU."""
    rows = []
    for path, target in (("loss", problem.target), ("loss_soft", problem.soft_target)):
        y = target if target.is_floating_point() else torch.nn.functional.one_hot(target, problem.params[2].shape[1])
        value, grads = evaluate(path_functions(path, problem)[0], problem)
        np_value, np_grads = reference.numpy_loss_and_gradients(
            problem.x.numpy(), y.to(torch.float64).numpy(), *(p.numpy() for p in problem.params)
        )
        witnesses = (
            torch.tensor(np_value, dtype=torch.float64),
            *(torch.from_numpy(np_grads[n]) for n in GRADIENT_NAMES),
        )
        for quantity, a, b in zip(("value", *GRADIENT_NAMES), (value, *grads), witnesses):
            rows.append(compare("numpy", "cpu", torch.float64, path, quantity, a, b, TOLERANCES))
    return rows


def compare_devices(problem: Problem, device: str, dtype: torch.dtype) -> list[Comparison]:
    """manualgrad on the CPU against manualgrad on ``device``, same weights and inputs."""
    rows = []
    cpu, other = problem.to("cpu", dtype), problem.to(device, dtype)
    for path in PATHS:
        value, grads = evaluate(path_functions(path, other)[0], other)
        cpu_value, cpu_grads = evaluate(path_functions(path, cpu)[0], cpu)
        for quantity, a, b in zip(("value", *GRADIENT_NAMES), (value, *grads), (cpu_value, *cpu_grads)):
            rows.append(compare(f"cpu-vs-{device}", device, dtype, path, quantity, a, b, CROSS_DEVICE_TOLERANCES))
    return rows


# ----------------------------------------------------------------------------------------
# gradcheck and gradgradcheck
# ----------------------------------------------------------------------------------------


def run_check(section: str, device: str, path: str, name: str, check: Callable[[], bool]) -> Check:
    try:
        ok = check()
    except Exception as error:  # gradcheck raises GradcheckError with the mismatching Jacobians
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Check(section, device, path, name, "fail", f"{type(error).__name__}: {first_line}")
    return Check(section, device, path, name, "pass" if ok else "fail")


def autograd_checks(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...]) -> dict[str, Callable[[], bool]]:
    """Every check torch.autograd offers for a function of float64 inputs."""
    gradcheck, gradgradcheck = torch.autograd.gradcheck, torch.autograd.gradgradcheck
    return {
        "gradcheck": lambda: gradcheck(fn, inputs),
        "gradcheck forward AD": lambda: gradcheck(fn, inputs, check_forward_ad=True, check_backward_ad=False),
        "gradcheck batched": lambda: gradcheck(
            fn, inputs, check_batched_grad=True, check_batched_forward_grad=True, check_forward_ad=True
        ),
        "gradgradcheck": lambda: gradgradcheck(fn, inputs),
        "gradgradcheck fwd-over-rev": lambda: gradgradcheck(fn, inputs, check_fwd_over_rev=True),
    }


def gradient_checks(device: str, seed: int) -> list[Check]:
    """gradcheck (with forward AD and batched gradients) and gradgradcheck, float64."""
    problem = Problem.make(GRADCHECK_BATCH, GRADCHECK_HIDDEN, seed, out_features=3).to(device, torch.float64)
    rows = []
    for path in PATHS:
        manual, _ = path_functions(path, problem)
        inputs = tuple(t.detach().clone().requires_grad_() for t in (problem.x, *problem.params))
        checks = autograd_checks(manual, inputs)
        rows.extend(run_check("gradcheck", device, path, name, check) for name, check in checks.items())
    return rows


# ----------------------------------------------------------------------------------------
# The whole report
# ----------------------------------------------------------------------------------------


def available_devices(choice: str = "all") -> list[str]:
    """``cpu``, ``cuda`` or ``all`` (the CPU plus CUDA when present)."""
    if choice == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch.cuda.is_available() is False")
    return [choice]


def verify(
    devices: Sequence[str] = ("cpu",),
    dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32),
    batch: int = 64,
    hidden: int = 500,
    seed: int = 0,
    gradcheck: bool = True,
    conformance: bool = True,
) -> Report:
    """Run every comparison and check; see the module docstring."""
    if batch < 1 or hidden < 1:
        raise ValueError(f"batch and hidden must be positive, got batch={batch}, hidden={hidden}")
    dtypes = list(dtypes)
    settings = {
        "torch": torch.__version__,
        "devices": list(devices),
        "dtypes": [_dtype_name(d) for d in dtypes],
        "batch": batch,
        "hidden": hidden,
        "seed": seed,
        "gradcheck_sizes": {"batch": GRADCHECK_BATCH, "hidden": GRADCHECK_HIDDEN, "classes": 3},
    }
    report = Report(settings)
    problem = Problem.make(batch, hidden, seed)
    for device in devices:
        for dtype in dtypes:
            report.comparisons += compare_with_autograd(problem, device, dtype)
    report.comparisons += compare_with_numpy(problem)
    for device in devices:
        if device != "cpu":
            for dtype in dtypes:
                report.comparisons += compare_devices(problem, device, dtype)
    if gradcheck:
        for device in devices:
            report.checks += gradient_checks(device, seed)
    if conformance:
        from .conformance import conformance_matrix

        for check, path, device, status, detail in conformance_matrix(devices):
            report.checks.append(Check("conformance", device, path, check, status, detail))
    return report


def _row(device, dtype, path, quantity, max_abs, max_rel, bit_exact, tolerance, result) -> str:
    return (
        f"  {device:<6} {dtype:<8} {path:<11} {quantity:<8} {max_abs:>11} {max_rel:>11} {bit_exact:>9}  "
        f"{tolerance:<13} {result}"
    )


def format_matrix(cells: list[Check]) -> list[str]:
    """The conformance matrix: a row per check, a column per (path, device)."""
    if not cells:
        return []
    columns = list(dict.fromkeys((c.path, c.device) for c in cells))
    rows = list(dict.fromkeys(c.check for c in cells))
    status = {(c.check, c.path, c.device): c for c in cells}
    width = max(len(r) for r in rows)
    header = f"  {'PyTorch conformance':<{width}} " + " ".join(f"{f'{p}/{d}':>12}" for p, d in columns)
    lines = [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        marks = [status[(row, p, d)].status if (row, p, d) in status else "-" for p, d in columns]
        lines.append(f"  {row:<{width}} " + " ".join(f"{m:>12}" for m in marks))
    lines += [f"  {c.check} [{c.path}/{c.device}] {c.status}: {c.detail}" for c in cells if c.detail]
    return [*lines, ""]


def format_report(report: Report) -> str:
    """The side-by-side table, as printed by ``python -m manualgrad verify``."""
    s = report.settings
    lines = [
        f"manualgrad verify: torch {s['torch']}, devices {', '.join(s['devices'])}, "
        f"dtypes {', '.join(s['dtypes'])}, batch {s['batch']}, hidden {s['hidden']}, seed {s['seed']}",
        "",
    ]
    titles = {
        "autograd": "manualgrad (hand-derived) vs PyTorch autograd (native ops)",
        "numpy": "manualgrad vs the plain-numpy twin (third witness, float64, mean loss)",
    }
    sections = dict.fromkeys(c.section for c in report.comparisons)
    for section in sections:
        rows = [c for c in report.comparisons if c.section == section]
        title = titles.get(section) or f"manualgrad on the CPU vs on {section.removeprefix('cpu-vs-')}, same weights"
        lines.append(title)
        header = _row(
            "device", "dtype", "path", "quantity", "max abs err", "max rel err", "bit-exact", "rtol/atol", "result"
        )
        lines += [header, "  " + "-" * (len(header) - 2)]
        for c in rows:
            lines.append(
                _row(
                    c.device, c.dtype, c.path, c.quantity, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
                    "yes" if c.bit_exact else "no", f"{c.rtol:.0e}/{c.atol:.0e}", "PASS" if c.passed else "FAIL",
                )
            )  # fmt: skip
        lines.append("")
    gradchecks = [c for c in report.checks if c.section == "gradcheck"]
    if gradchecks:
        sizes = s["gradcheck_sizes"]
        lines.append(f"torch.autograd checks, float64 (N={sizes['batch']}, H={sizes['hidden']}, C={sizes['classes']})")  # type: ignore[index]
        for c in gradchecks:
            detail = f"  ({c.detail})" if c.detail else ""
            lines.append(f"  {c.device:<6} {c.path:<11} {c.check:<28} {c.status.upper()}{detail}")
        lines.append("")
    lines += format_matrix([c for c in report.checks if c.section == "conformance"])
    total = len(report.comparisons) + len(report.checks)
    skipped = sum(c.status == "skipped" for c in report.checks)
    lines.append(f"verify: {total - report.failures - skipped} passed, {report.failures} failed, {skipped} skipped")
    return "\n".join(lines)
