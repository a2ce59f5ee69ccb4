"""Training precision, and the one numeric path every score takes.

Training may run under autocast (bf16 on CPU, fp16 with a grad scaler); the weights stay
fp32 either way. Every number recsmith reports or serves (validation decisions, eval.json,
summaries, comparisons, saved predictions, the Scorer, batch inference, the service, the
ONNX / TorchScript exports, the monitor) is computed from those fp32 weights in fp32
(`SCORING`), so offline and served scores agree whatever precision trained the model.

`runtime.amp: auto` picks a reduced precision only on a hardware class where it was
measured faster than fp32 for every model (`bench/throughput.py --precisions fp32,bf16` for
the chain's structures, `bench/precision_sequential.py` for the sequential models):
`MEASURED_FASTER`, with the tables in docs/performance.md, "Training precision".
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SCORING = "fp32"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# hardware class -> the reduced precision measured faster than fp32 there (docs/performance.md):
#   cpu-native-bf16 (AVX512-BF16; a 2-core AMD EPYC): bf16 trains E0a..E5 1.23-1.26x faster
#     than fp32 on the real path (bench/throughput_precision.json), the sequential models
#     1.11-1.71x (bench/precision_sequential.json)
#   cpu-no-bf16 (AVX2 only): bf16 is emulated, 11-13x slower than fp32 -> not listed
#   cuda: not measured yet -> not listed (runtime.amp: true or fp16 forces fp16 + grad scaler)
MEASURED_FASTER = {"cpu-native-bf16": "bf16"}


# oneDNN runs the bf16 matmuls; ONEDNN_MAX_CPU_ISA set to one of these keeps it off the
# CPU's bf16 instructions, so bf16 is emulated there as on a CPU without them
ONEDNN_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX) and oneDNN may use it."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISA_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def hardware_class(device: torch.device) -> str:
    """The class `auto`'s measurements are keyed by."""
    if device.type == "cuda":
        return "cuda"
    return "cpu-native-bf16" if cpu_has_native_bf16() else "cpu-no-bf16"


@dataclass(frozen=True)
class Precision:
    """How training runs: `name` fp32, bf16 or fp16 (autocast), on `device_type`."""

    name: str
    device_type: str
    reason: str

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES.get(self.name, torch.float32)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's narrow exponent needs loss scaling; bf16 has fp32's range and does not."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def describe(self) -> str:
        kind = "fp32" if not self.enabled else f"{self.name} autocast"
        return f"{kind} ({self.reason}); scored in {SCORING}"

    def record(self) -> dict:
        """What eval.json, summaries and bundles say about it."""
        return {"train": self.name, "score": SCORING, "device": self.device_type, "reason": self.reason}


def resolve_precision(amp, device: torch.device) -> Precision:
    """`runtime.amp`: false → fp32; "bf16" / "fp16" force that autocast; true → the device's
    reduced precision (fp16 on CUDA, bf16 on CPU); "auto" → a reduced precision only where
    it was measured faster on this hardware class (MEASURED_FASTER), else fp32."""
    if amp is False:
        return Precision("fp32", device.type, "runtime.amp is false")
    if amp in DTYPES:
        return Precision(amp, device.type, f"runtime.amp is {amp}")
    if amp is True:
        return Precision("fp16" if device.type == "cuda" else "bf16", device.type, "runtime.amp is true")
    hardware = hardware_class(device)
    chosen = MEASURED_FASTER.get(hardware)
    if chosen:
        return Precision(chosen, device.type, f"auto: {chosen} measured faster than fp32 on {hardware}")
    return Precision("fp32", device.type, f"auto: no reduced precision measured faster on {hardware}")
