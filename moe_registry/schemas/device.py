"""Target devices: named presets and generic ``smNN`` targets (plain data, no I/O).

Planning for a device that is not this machine is the point of the tool, so a DeviceSpec is plain
data. Figures for memory, bandwidth and bf16 peak are vendor datasheet values (dense, no
sparsity) used only for roofline arithmetic in benchmarks; ``None`` where no datasheet is cited.
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Vendor = Literal["nvidia", "amd", "cpu"]


MAX_DEVICE_MEMORY_GB = 1e6


class DeviceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # output is strict JSON

    name: str
    vendor: Vendor
    # NVIDIA compute capability as one integer: 90 for SM 9.0, 103 for SM 10.3. None on CPU.
    sm: int | None = Field(default=None, ge=10, le=200)
    # Bounded far above any device (a petabyte, a petabyte per second, an exaflop): a device
    # reporting 1e308 GB must not overflow the memory-fit arithmetic.
    memory_gb: float | None = Field(default=None, gt=0, le=MAX_DEVICE_MEMORY_GB)
    memory_bandwidth_gbs: float | None = Field(default=None, gt=0, le=1e6)
    bf16_dense_tflops: float | None = Field(default=None, gt=0, le=1e6)
    source: str = ""

    @property
    def family(self) -> int | None:
        """SM major version (10 for SM100 and SM103), the unit vLLM's ``is_device_capability_family`` uses."""
        return None if self.sm is None else self.sm // 10

    def label(self) -> str:
        return self.name if self.sm is None else f"{self.name} (SM{self.sm})"


_DATASHEETS = "NVIDIA datasheets (A100, L40S, H100 SXM, H200 SXM, HGX B200, GB200 NVL72, B300, RTX PRO 6000)"

PRESETS: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        DeviceSpec(name="cpu", vendor="cpu"),
        DeviceSpec(name="a100", vendor="nvidia", sm=80, memory_gb=80, memory_bandwidth_gbs=2039,
                   bf16_dense_tflops=312, source=_DATASHEETS),
        DeviceSpec(name="l40s", vendor="nvidia", sm=89, memory_gb=48, memory_bandwidth_gbs=864,
                   bf16_dense_tflops=362, source=_DATASHEETS),
        DeviceSpec(name="h100", vendor="nvidia", sm=90, memory_gb=80, memory_bandwidth_gbs=3350,
                   bf16_dense_tflops=989, source=_DATASHEETS),
        DeviceSpec(name="h200", vendor="nvidia", sm=90, memory_gb=141, memory_bandwidth_gbs=4800,
                   bf16_dense_tflops=989, source=_DATASHEETS),
        DeviceSpec(name="b200", vendor="nvidia", sm=100, memory_gb=180, memory_bandwidth_gbs=8000,
                   bf16_dense_tflops=2250, source=_DATASHEETS),
        DeviceSpec(name="gb200", vendor="nvidia", sm=100, memory_gb=186, memory_bandwidth_gbs=8000,
                   bf16_dense_tflops=2500, source=_DATASHEETS),
        DeviceSpec(name="b300", vendor="nvidia", sm=103, memory_gb=288, memory_bandwidth_gbs=8000,
                   source=_DATASHEETS),
        DeviceSpec(name="rtx-pro-6000", vendor="nvidia", sm=120, memory_gb=96, memory_bandwidth_gbs=1792,
                   source=_DATASHEETS),
        *(DeviceSpec(name=f"sm{sm}", vendor="nvidia", sm=sm) for sm in (75, 80, 86, 89, 90, 100, 103, 110, 120, 121)),
    )
}


def get_device(name: str) -> DeviceSpec:
    """A preset by name (case-insensitive, ``sm_90`` and ``SM90`` accepted); ValueError otherwise."""
    if not isinstance(name, str):
        from ..errors import InvalidDevice

        raise InvalidDevice(f"a device preset name is a string such as 'h100', got {type(name).__name__}")
    key = name.strip().lower().replace("_", "")
    key = {"rtxpro6000": "rtx-pro-6000"}.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    if key.startswith("sm") and key[2:].isdigit():
        sm = int(key[2:])
        if 10 <= sm <= 200:
            return DeviceSpec(name=f"sm{sm}", vendor="nvidia", sm=sm)
    raise ValueError(f"unknown device {name!r}; presets: {', '.join(PRESETS)} (or any smNN)")
