"""lifejax: the whole LLM training lifecycle in one JAX code path.

Shape-letter legend used in names throughout the package:
  B batch, T (or L) length, S key length, D embed, H query heads, K kv heads,
  G query heads per kv head (H // K), E head dim, F mlp hidden, V vocab,
  N flattened tokens (B*T), Y layers.
"""

__version__ = "0.1.0"
