"""Which host a golden record holds the bits of.

XLA:CPU compiles for the CPU it runs on: an AVX-512 host and an AVX2-only
host vectorise (and so sum) in another order, and the per-step losses of
the same code differ in their last digits (measured: at most 7e-5
absolute, in GRPO's losses; up to 1.4e-6 in the supervised stages). A golden record therefore names the host it was recorded on, and
only the fields it names must match: a record made on several AVX-512
hosts that agreed bitwise names no vendor.

On a matching host the goldens are compared bitwise. On any other host they
are compared within CROSS_HOST_RTOL / CROSS_HOST_ATOL (a warning says so):
a behaviour change (data order, masking, a loss term) moves these losses
by far more than that, but a last-bit regression is only caught on a host
that has its own record (add one with LIFEJAX_ADD_GOLDEN_HOST=1, see
conftest.py).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

import jax
import jaxlib
import numpy as np

# |a - b| <= ATOL + RTOL * |b|. Measured between the AVX-512 and the AVX2
# records: 6.8e-5 at most (a GRPO loss of 0.41), 1.4e-6 in the supervised
# stages; swapping two adjacent steps' data moves a loss by >= 8e-3.
CROSS_HOST_RTOL = 1e-4
CROSS_HOST_ATOL = 1e-4


def _cpu_flags_and_vendor() -> tuple[set[str], str]:
  flags: set[str] = set()
  vendor = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
          flags = set(value.split())
        elif key in ("vendor_id", "CPU implementer") and vendor in (
            "unknown", "", platform.machine()):
          vendor = value.strip()
  except OSError:
    pass
  return flags, vendor


# AVX-512 extensions that tell CPU generations apart (Skylake-SP has none of
# them, Cascade Lake VNNI, Ice Lake VBMI/IFMA/..., Sapphire Rapids BF16, FP16
# and AMX too). XLA:CPU compiles for the host CPU's model, and a Sapphire
# Rapids host (all of these) summed the golden runs in another order than the
# hosts of the first AVX-512 record (DPO eval reward 0.64212 vs 0.64181).
_ISA_EXT = ("avx512_vnni", "avx512vbmi", "avx512_vbmi2", "avx512ifma",
            "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16",
            "amx_tile")


def host_spec() -> dict[str, str]:
  """This host's fields that decide XLA:CPU's float results."""
  flags, vendor = _cpu_flags_and_vendor()
  if "avx512f" in flags:
    isa = "avx512"
  elif "avx2" in flags:
    isa = "avx2"
  elif "sve" in flags:
    isa = "sve"
  else:
    isa = "baseline"
  ext = "+".join(f for f in _ISA_EXT if f in flags) or "none"
  return {"machine": platform.machine(), "vendor": vendor, "isa": isa,
          "isa_ext": ext, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__}


def matches(recorded: Mapping[str, str], host: Mapping[str, str]) -> bool:
  """Every field the record names equals this host's."""
  return all(host.get(k) == v for k, v in recorded.items())


def own_records(records: list, host: Mapping[str, str]) -> list:
  """The records whose host fields all match this host, the most specific
  (most fields named) first: a record made on this CPU generation wins over
  one that names only the ISA."""
  own = [r for r in records if matches(r["host"], host)]
  return sorted(own, key=lambda r: -len(r["host"]))


def has_own_record(records: list, host: Mapping[str, str]) -> bool:
  """A record names every field of this host's spec (so adding this host
  would duplicate it)."""
  return any(all(r["host"].get(k) == v for k, v in host.items())
             for r in records)


def describe(spec: Mapping[str, str]) -> str:
  return ", ".join(f"{k}={v}" for k, v in spec.items())


def assert_close_across_hosts(got, want, what: str) -> None:
  np.testing.assert_allclose(np.asarray(got, np.float64),
                             np.asarray(want, np.float64),
                             rtol=CROSS_HOST_RTOL, atol=CROSS_HOST_ATOL,
                             err_msg=f"{what} (cross-host tolerance)")


def stage_values(stages: Mapping[str, Mapping]) -> dict[str, list[float]]:
  """{"<stage>/<field>[/<step>/<metric>]": values} of a record's stages,
  for comparing two records."""
  out: dict[str, list[float]] = {}
  for stage, entry in stages.items():
    for field in ("losses", "resumed_losses"):
      out[f"{stage}/{field}"] = list(entry[field])
    for step, metrics in entry.get("eval", {}).items():
      for k, v in metrics.items():
        out[f"{stage}/eval/{step}/{k}"] = [v]
  return out


def agree_across_hosts(a: Mapping[str, Mapping], b: Mapping[str, Mapping]
                       ) -> list[str]:
  """Where two records' stages differ by more than the cross-host
  tolerance (or in shape); empty when they agree."""
  va, vb = stage_values(a), stage_values(b)
  bad = sorted(set(va) ^ set(vb))
  for k in sorted(set(va) & set(vb)):
    x, y = np.asarray(va[k]), np.asarray(vb[k])
    if x.shape != y.shape or not np.allclose(
        x, y, rtol=CROSS_HOST_RTOL, atol=CROSS_HOST_ATOL):
      bad.append(k)
  return bad
