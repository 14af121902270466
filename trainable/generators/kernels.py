"""The opt-in execution options of the training step: compile, channels_last, amp (docs/performance.md).

None of them changes what is computed, only how: ``compile`` runs the rollout's two
per-step kernels (the generator update and the classifier's CE + input gradient) through
``torch.compile``; ``channels_last`` stores the generator and the classifier NHWC;
``amp: bf16`` runs the generator under bf16 autocast on CUDA while the classifier's loss and
input gradient stay fp32. Where ``torch.compile`` cannot be used (no compiler, an
unsupported Python, a backend error), one line says so on stderr and the trial runs eager.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from trainable.generators.rollout import RolloutKernels, ce_and_input_gradient_functional, generator_update

AMP_DTYPES = {"bf16": torch.bfloat16}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _compiler_errors() -> tuple[type[BaseException], ...]:
    """What a failing compiler raises (as opposed to an error in the computation itself)."""
    errs: list[type[BaseException]] = [OSError]
    try:
        import torch._dynamo.exc as dexc

        errs += [dexc.BackendCompilerFailed, dexc.InternalTorchDynamoError]
    except Exception:  # pragma: no cover - a torch without dynamo
        pass
    try:
        import torch._inductor.exc as iexc

        errs += [c for c in (getattr(iexc, "InvalidCxxCompiler", None), getattr(iexc, "CppCompileError", None)) if c]
    except Exception:  # pragma: no cover
        pass
    return tuple(errs)


class CompiledOrEager:
    """``torch.compile(fn)``, falling back to `fn` itself (once, with one line on stderr) when compiling fails."""

    def __init__(self, fn: Callable[..., Any], what: str) -> None:
        self.eager, self.what = fn, what
        self.fn: Callable[..., Any] | None = None
        self.fell_back = False

    def _fallback(self, exc: BaseException) -> None:
        self.fell_back = True
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        _say(f"compile: torch.compile unavailable for {self.what} ({type(exc).__name__}: {first}); running eager")

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if not self.fell_back and self.fn is None:
            try:
                self.fn = torch.compile(self.eager, dynamic=False)
            except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python)
                self._fallback(exc)
        if self.fell_back:
            return self.eager(*args, **kw)
        try:
            return self.fn(*args, **kw)
        except _compiler_errors() as exc:
            self._fallback(exc)
            return self.eager(*args, **kw)


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The generator's autocast dtype for the `amp` option; bf16 is offered on CUDA only."""
    if amp is None:
        return None
    if device.type != "cuda":
        from trainable.errors import ConfigError

        raise ConfigError(f"amp: {amp} runs on CUDA only (this trial's device is {device.type}); set amp: null")
    return AMP_DTYPES[amp]


def build_kernels(cfg: Any, device: torch.device) -> RolloutKernels:
    """The rollout kernels a TrialConfig asks for (eager unless `compile`; `amp` on CUDA)."""
    if not cfg.compile:
        return RolloutKernels(amp_dtype=amp_dtype(cfg.amp, device))
    return RolloutKernels(ce_grad=CompiledOrEager(ce_and_input_gradient_functional, "the input-gradient step"),
                          update=CompiledOrEager(generator_update, "the generator update"),
                          amp_dtype=amp_dtype(cfg.amp, device))
