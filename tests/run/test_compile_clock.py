"""CompileClock counts XLA backend compilations while it is active."""

import time

import jax
import jax.numpy as jnp

from lifejax.run.compile_clock import CompileClock


def test_counts_each_new_compilation_once_and_nests():
  f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x))
  x, x9 = jnp.arange(7.0), jnp.arange(9.0)  # their own compiles, before
  with CompileClock() as outer:
    t0 = time.perf_counter()
    with CompileClock() as inner:
      f(x).block_until_ready()        # compiles
    f(x).block_until_ready()          # cached: no compile
    f(x9).block_until_ready()         # a new shape compiles
    wall = time.perf_counter() - t0
  assert inner.count == 1 and inner.seconds > 0
  assert outer.count == 2 and outer.seconds >= inner.seconds
  assert outer.seconds <= wall
  with CompileClock() as after:
    f(x).block_until_ready()
  assert after.count == 0 and after.seconds == 0.0
  # Exited clocks stop listening.
  jax.jit(lambda x: x + 1)(x).block_until_ready()
  assert outer.count == 2
