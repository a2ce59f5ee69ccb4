"""Mixed precision: bf16 autocast on CPU, fp16 autocast with a grad scaler on CUDA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype | None
    device_type: str
    use_grad_scaler: bool
    reason: str

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.use_grad_scaler else None

    def describe(self) -> str:
        if not self.enabled:
            return f"fp32 ({self.reason})"
        return f"{str(self.dtype).removeprefix('torch.')} autocast ({self.reason})"


def resolve_precision(amp, device: torch.device) -> Precision:
    """`runtime.amp`: true forces mixed precision; "auto" uses it where the hardware runs it
    natively (CUDA; CPUs with bf16 units), since emulated bf16 is several times slower."""
    if amp is False:
        return Precision(False, None, device.type, False, "runtime.amp is false")
    if device.type == "cuda":
        return Precision(True, torch.float16, "cuda", True, f"runtime.amp is {amp}")
    if amp is True:
        return Precision(True, torch.bfloat16, "cpu", False, "runtime.amp is true")
    if cpu_has_native_bf16():
        return Precision(True, torch.bfloat16, "cpu", False, "auto: CPU has native bf16")
    return Precision(False, None, "cpu", False, "auto: this CPU has no native bf16, fp32 is faster")
