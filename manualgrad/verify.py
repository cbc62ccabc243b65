"""``python -m manualgrad verify``: manualgrad's three entry points on the manualgrad.testing engine.

Every path the library can take is a case for :func:`manualgrad.testing.run_checks`, compared
with the native-autograd twin in :mod:`manualgrad.reference` (or the numpy twin), never with
manualgrad itself. Sections, printed as each finishes:

1. the twin, float64 and float32, every device: probs, logits, the loss with class indices and
   with probability targets that require grad, every reduction, unbatched input;
2. the loss computing its gradients in the forward, at its real sizes (from
   ``modes.PRECOMPUTE_MIN_ROWS`` rows): one chunk, several chunks with a shorter last
   one, a one-row last chunk; Hessian-vector products and jvp there too;
3. the plain-numpy twin (float64, mean loss) as a third witness;
4. torch.autograd: gradcheck, gradgradcheck, Hessian-vector products and forward AD with
   respect to every input, float64, on small sizes, every path above;
5. PyTorch mechanisms: vmap, per-sample gradients, torch.compile, dynamic shapes, torch.export,
   autocast, non-contiguous inputs, memory saved for backward, CUDA; then the module-level
   checks of :mod:`manualgrad.conformance` (autocast policy, module contracts, DDP).

:func:`verify` returns a :class:`VerifyReport` (a :class:`manualgrad.testing.Report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch

from . import modes
from .testing import Case, CheckResult, run_checks
from .testing.engine import exception_message
from .verify_cases import Problem, loss_case, network_case, numpy_results
from .verify_report import VerifyReport, format_report, progress_printer

__all__ = ["DTYPES", "VerifyReport", "available_devices", "format_report", "progress_printer", "verify"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}
"""The dtypes ``verify --dtype`` accepts, by name."""
REDUCTIONS = ("mean", "sum", "none")
GRADCHECK_SIZES = {"batch": 5, "hidden": 16, "classes": 3}
MECHANISM_SIZES = {"batch": 8, "hidden": 16, "classes": 3}
VALUE_CHECKS = ("values", "gradients")
AUTOGRAD_CHECKS = ("gradcheck", "gradgradcheck", "hvp", "forward_ad")
MECHANISM_CHECKS = (
    "vmap", "per_sample_grad", "compile", "compile_dynamic", "export", "autocast",
    "non_contiguous", "saved_memory", "cuda", "grad_output_unmodified",
)  # fmt: skip


def every_path(problem: Problem, device: str, dtype: torch.dtype) -> list[tuple[str, Case]]:
    """probs, logits, the loss (class indices; probability targets requiring grad) for every
    reduction, the scalar losses of class indices also with their gradients in backward, and the
    unbatched form of each."""
    cases = [(path, network_case(path, problem, device, dtype)) for path in ("probs", "logits")]
    for reduction in REDUCTIONS:
        cases.append((f"loss {reduction}", loss_case(problem, device, dtype, reduction)))
        if reduction != "none":  # the default is eager.py's lean loss at small N: the general one too
            in_backward = loss_case(problem, device, dtype, reduction, in_forward=False)
            cases.append((f"loss {reduction} in backward", in_backward))
        cases.append((f"soft {reduction}", loss_case(problem, device, dtype, reduction, soft=True, target_grad=True)))
    one = problem.row(0)
    cases += [(f"{path} unbatched", network_case(path, one, device, dtype)) for path in ("probs", "logits")]
    cases.append(("loss unbatched", loss_case(one, device, dtype)))
    cases.append(("soft unbatched", loss_case(one, device, dtype, soft=True, target_grad=True)))
    return cases


def in_forward_cases(problem: Problem, device: str, dtype: torch.dtype) -> list[tuple[str, Case]]:
    """The loss computing its gradients in the forward: by default (one chunk), in chunks with a
    shorter last chunk, and with a one-row last chunk."""
    n = problem.x.shape[0]
    several = n // 3 + 1  # three chunks, the last one shorter
    cases = []
    default = None if n >= modes.PRECOMPUTE_MIN_ROWS else True  # at real sizes: the default itself
    for reduction in ("mean", "sum"):
        cases += [
            (f"loss {reduction} N={n}", loss_case(problem, device, dtype, reduction, in_forward=default)),
            (f"loss {reduction} chunks of {several}", loss_case(problem, device, dtype, reduction, chunk_rows=several)),
            (
                f"soft {reduction} chunks of {n - 1}",
                loss_case(problem, device, dtype, reduction, True, chunk_rows=n - 1),
            ),
        ]
    return cases


def _real_size_checks(label: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Values and gradients; in float64 and for the mean, also double backward and jvp, whose
    tanh takes its sigmoid form only at these sizes."""
    return (*VALUE_CHECKS, "hvp", "forward_ad") if dtype == torch.float64 and " mean " in label else VALUE_CHECKS


def small_cases(problem: Problem, device: str) -> list[tuple[str, Case]]:
    """Every path except the unbatched probs and logits (their values and gradients are in
    section 1), and the gradients-in-forward cases."""
    batched = [
        c for c in every_path(problem, device, torch.float64) if c[0] not in ("probs unbatched", "logits unbatched")
    ]
    return [*batched, *in_forward_cases(problem, device, torch.float64)]


def _fast_gradcheck(cases: list[tuple[str, Case]]) -> list[tuple[str, Case]]:
    """gradcheck and gradgradcheck in fast mode (a random projection of the Jacobian): exact
    comparisons with the twin (gradients, hvp, forward_ad) carry the precision."""
    for _, case in cases:
        case.fast_gradcheck = True
    return cases


def _run(cases: Iterable[tuple[str, Case]], checks: Sequence[str], suffix: str = "") -> list[CheckResult]:
    return [r for label, case in cases for r in run_checks(case, checks, f"{label}{suffix}")]


def sections(
    devices: Sequence[str],
    dtypes: Sequence[torch.dtype],
    batch: int,
    hidden: int,
    seed: int,
    gradcheck: bool,
    conformance: bool,
) -> list[tuple[str, Callable[[], list[CheckResult]]]]:
    """(title, run) for every section, in order."""
    problem = Problem.make(batch, hidden, seed)
    real = Problem.make(modes.PRECOMPUTE_MIN_ROWS + 44, hidden, seed + 1)
    small = Problem.make(GRADCHECK_SIZES["batch"], GRADCHECK_SIZES["hidden"], seed, out_features=3)
    mech = Problem.make(MECHANISM_SIZES["batch"], MECHANISM_SIZES["hidden"], seed, out_features=3)

    def name(device: str, dtype: torch.dtype) -> str:
        return f" {device} {str(dtype).removeprefix('torch.')}"

    plan: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        (
            f"manualgrad vs the native-autograd twin: values and gradients (N={batch}, H={hidden})",
            lambda: [
                r for d in devices for t in dtypes for r in _run(every_path(problem, d, t), VALUE_CHECKS, name(d, t))
            ],
        ),
        (
            f"gradients in the forward at real sizes (N={real.x.shape[0]}, H={hidden}), vs the twin",
            lambda: [
                r
                for d in devices
                for t in dtypes
                for label, case in in_forward_cases(real, d, t)
                for r in run_checks(case, _real_size_checks(label, t), f"{label}{name(d, t)}")
            ],
        ),
        ("manualgrad vs the plain-numpy twin (float64, mean loss)", lambda: numpy_results(problem, real)),
    ]
    if gradcheck:
        plan.append(
            (
                "torch.autograd checks, float64 (N={batch}, H={hidden}, C={classes})".format(**GRADCHECK_SIZES),
                lambda: [
                    r for d in devices for r in _run(_fast_gradcheck(small_cases(small, d)), AUTOGRAD_CHECKS, f" {d}")
                ],
            )
        )
    if conformance:
        from . import conformance as module_checks

        def mechanisms(device: str) -> list[tuple[str, Case]]:
            paths = ("probs", "logits", "loss mean", "soft mean")
            return [(label, case) for label, case in every_path(mech, device, torch.float64) if label in paths]

        plan.append(
            (
                "PyTorch mechanisms vs the twin, float64 (N={batch}, H={hidden}, C={classes})".format(
                    **MECHANISM_SIZES
                ),
                lambda: [r for d in devices for r in _run(mechanisms(d), MECHANISM_CHECKS, f" {d}")],
            )
        )
        plan.append(("manualgrad as a module: autocast policy, contracts, DDP", lambda: module_checks.results(devices)))
    return plan


def verify(
    devices: Sequence[str] = ("cpu",),
    dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32),
    batch: int = 64,
    hidden: int = 500,
    seed: int = 0,
    gradcheck: bool = True,
    conformance: bool = True,
    progress: Callable[[int, int, str, list[CheckResult] | None, float], None] | None = None,
) -> VerifyReport:
    """Check manualgrad's three entry points against its twins: what ``python -m manualgrad verify`` runs.

    The sections are listed in the module docstring; every check compares manualgrad with the
    native-autograd twin (:mod:`manualgrad.reference`) or the numpy twin, never with itself. A
    failing check, or a section that raises, is a failing result, never an exception.

    Args:
        devices: devices to run on (see :func:`available_devices`).
        dtypes: dtypes of the value and gradient sections (the others run in float64).
        batch: rows N of the first section's problem (the real-size section has its own).
        hidden: hidden units H of the first two sections.
        seed: seed of the parameters, inputs and targets.
        gradcheck: run the torch.autograd section (gradcheck, gradgradcheck, hvp, forward AD).
        conformance: run the PyTorch-mechanisms section and the module-level checks
            (autocast policy, module contracts, DDP); the slowest part.
        progress: ``progress(i, n, title, results, seconds)``, called with i=0 and the report's
            title first, then before each section (results None) and after it (its results
            and seconds); :func:`progress_printer` makes one.

    Returns:
        A :class:`VerifyReport`; ``report.passed`` is False if any check failed.

    Raises:
        ValueError: ``batch`` or ``hidden`` below 1.

    Example:
        The quick sections only (values, gradients, the numpy twin), in float64:

        >>> import torch
        >>> from manualgrad.verify import verify
        >>> report = verify(dtypes=[torch.float64], batch=4, hidden=3, gradcheck=False, conformance=False)
        >>> report.passed
        True
        >>> for title, results, seconds in report.sections:
        ...     print(title)
        manualgrad vs the native-autograd twin: values and gradients (N=4, H=3)
        gradients in the forward at real sizes (N=300, H=3), vs the twin
        manualgrad vs the plain-numpy twin (float64, mean loss)
        >>> report.status_of("numpy")
        'pass'
    """
    if batch < 1 or hidden < 1:
        raise ValueError(f"batch and hidden must be positive, got batch={batch}, hidden={hidden}")
    dtypes = list(dtypes)
    settings = {
        "torch": torch.__version__,
        "devices": list(devices),
        "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
        "batch": batch,
        "hidden": hidden,
        "seed": seed,
    }
    report = VerifyReport(title=_title(settings), settings=settings)
    plan = sections(devices, dtypes, batch, hidden, seed, gradcheck, conformance)
    if progress:
        progress(0, len(plan), report.title, None, 0.0)
    for i, (title, run) in enumerate(plan, 1):
        if progress:
            progress(i, len(plan), title, None, 0.0)
        start = time.perf_counter()
        try:
            results = run()
        except Exception as error:  # every check catches its own; this is the last line of defence
            results = [CheckResult("section", "fail", exception_message(error), title)]
        report.add_section(title, results, time.perf_counter() - start)
        if progress:
            progress(i, len(plan), title, results, time.perf_counter() - start)
    return report


def _title(s: dict[str, object]) -> str:
    return (
        f"manualgrad verify: torch {s['torch']}, devices {', '.join(s['devices'])}, "  # type: ignore[arg-type]
        f"dtypes {', '.join(s['dtypes'])}, batch {s['batch']}, hidden {s['hidden']}, seed {s['seed']}"  # type: ignore[arg-type]
    )


def available_devices(choice: str = "all") -> list[str]:
    """The devices ``verify --device`` means.

    Args:
        choice: ``"cpu"``, ``"cuda"`` or ``"all"`` (the CPU, plus CUDA when present).

    Returns:
        The device names for :func:`verify`.

    Raises:
        RuntimeError: ``"cuda"`` asked for without a CUDA device.

    Example:
        >>> from manualgrad.verify import available_devices
        >>> available_devices("cpu")
        ['cpu']
    """
    if choice == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch.cuda.is_available() is False")
    return [choice]
