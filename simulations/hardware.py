"""The accelerator catalogue: peak FLOPs, HBM, links and power of each GPU kind.

Read from `simulations/data/hardware.yaml` (a copy of the shared catalogue, sources inside) plus
`hardware_extra.yaml`. Pure data after loading; `get_accelerator(name)` raises ConfigError listing the
valid names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOGUE_FILES = (DATA_DIR / "hardware.yaml", DATA_DIR / "hardware_extra.yaml")
# Aliases a user (or the Splitwise table) may write for a catalogue entry.
ALIASES = {"h100": "h100-sxm", "h100-80gb": "h100-sxm", "a100": "a100-sxm", "a100-80gb": "a100-sxm"}


@dataclass(frozen=True)
class Accelerator:
    """One GPU kind. Rates are per GPU: FLOPs dense, bandwidths in bytes/s, power in watts."""

    name: str
    bf16_flops: float
    fp8_flops: float
    fp4_flops: float
    hbm_bytes: float
    hbm_bytes_per_s: float
    scale_up_bytes_per_s: float
    scale_out_bytes_per_s: float
    tdp_w: float
    all_in_kw_per_gpu: float | None  # host + network + facility included (InferenceMAX); None: not published
    announced_only: bool = False

    def flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for compute in `dtype` (falls back to the next wider type the GPU has)."""
        order = {"fp4": (self.fp4_flops, self.fp8_flops, self.bf16_flops),
                 "fp8": (self.fp8_flops, self.bf16_flops), "bf16": (self.bf16_flops,)}
        for value in order.get(dtype, (self.bf16_flops,)):
            if value > 0:
                return value
        raise ConfigError(f"accelerator {self.name} publishes no {dtype} or wider peak FLOPs")


def _accelerator(name: str, entry: dict) -> Accelerator:
    tflops = lambda key: float(entry.get(key) or 0) * 1e12  # noqa: E731
    all_in = entry.get("all_in_kw_per_gpu")
    return Accelerator(
        name=name, bf16_flops=tflops("bf16_tflops"), fp8_flops=tflops("fp8_tflops"), fp4_flops=tflops("fp4_tflops"),
        hbm_bytes=float(entry.get("hbm_gb", 0)) * 1e9, hbm_bytes_per_s=float(entry.get("hbm_tb_s", 0)) * 1e12,
        scale_up_bytes_per_s=float(entry.get("scale_up_gb_s") or 0) * 1e9,
        scale_out_bytes_per_s=float(entry.get("scale_out_gb_s") or 25) * 1e9,
        tdp_w=float(entry.get("tdp_w") or 0), all_in_kw_per_gpu=float(all_in) if all_in else None,
        announced_only=bool(entry.get("announced_only", False)))


@lru_cache(maxsize=None)
def load_catalogue(paths: tuple[Path, ...] = CATALOGUE_FILES) -> dict[str, Accelerator]:
    """Every accelerator in the catalogue files, by name."""
    catalogue: dict[str, Accelerator] = {}
    for path in paths:
        if not path.exists():
            continue
        for name, entry in (yaml.safe_load(path.read_text()) or {}).items():
            catalogue[name] = _accelerator(name, entry)
    return catalogue


def get_accelerator(name: str) -> Accelerator:
    """The named accelerator; ConfigError (listing the usable names) when unknown or not simulable."""
    catalogue = load_catalogue()
    accelerator = catalogue.get(ALIASES.get(name.lower(), name.lower()))
    usable = sorted(n for n, a in catalogue.items() if _usable(a))
    if accelerator is None:
        raise ConfigError(f"unknown accelerator {name!r}; valid: {', '.join(usable)}")
    if not _usable(accelerator):
        raise ConfigError(f"accelerator {accelerator.name} is announced only (no published power or bf16 figures); "
                          f"valid: {', '.join(usable)}")
    return accelerator


def _usable(accelerator: Accelerator) -> bool:
    return not accelerator.announced_only and accelerator.tdp_w > 0 and accelerator.hbm_bytes_per_s > 0


def accelerator_names() -> list[str]:
    """Names `get_accelerator` accepts (aliases excluded)."""
    return sorted(n for n, a in load_catalogue().items() if _usable(a))
