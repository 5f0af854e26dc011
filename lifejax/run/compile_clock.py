"""How long XLA compiled while a block of code ran.

JAX reports every backend compilation (HLO to an executable) as a
`jax.monitoring` duration event; `CompileClock` sums those events while it is
active. The lifecycle wraps each stage in one and writes the sum into
lifecycle.json, so a stage's wall time splits into compiling and running
(compilations served from JAX's persistent cache are not backend compiles
and are not counted).
"""

from __future__ import annotations

import threading

import jax

# jax._src.dispatch.BACKEND_COMPILE_EVENT (the name is the public contract
# of jax.monitoring; the constant itself is private).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileClock:
  """Context manager: `seconds` and `count` of XLA backend compilations
  recorded in this process while it is active (every thread). Clocks may
  nest; each counts what happened while it was active."""

  def __init__(self):
    self.seconds = 0.0
    self.count = 0
    self._lock = threading.Lock()

  def _listen(self, event: str, duration: float, **_) -> None:
    if event == BACKEND_COMPILE_EVENT:
      with self._lock:
        self.seconds += duration
        self.count += 1

  def __enter__(self) -> "CompileClock":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
