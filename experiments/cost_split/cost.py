"""The training compute of each stage of a lifecycle run, counted from what
the run did (issue 19 row 16, "the cost split").

For every stage in a lifecycle root's ledger (lifecycle.json) this reads the
stage's operative gin config (the values it ran with: model, batch, sequence
length, steps, RL rollout sizes), its summary (the steps it really ran) and
its metrics (RL iterations and response lengths), and counts model FLOPs by
lifejax's one convention (lifejax/model/flops.py: matmul FLOPs, training =
3 x forward, causal attention):

* LM stages (pretrain, sft): steps x rows x seq_len tokens of training
  (padded rows: the hardware processes the padding too).
* reward: steps x rows x 2 sequences (chosen, rejected) of training.
* dpo: the same pairs trained, plus the frozen reference's log-probs,
  precomputed once: one forward per pair sequence.
* ppo / grpo: per iteration, prompts x samples sequences of prompt_len +
  max_new_tokens: sampling (one forward per position: a KV-cached decode
  does one token's forward per step), the teacher-forced scoring forwards
  (old policy log-probs, the reference, the reward model when the reward is
  learned, a separate critic), and `epochs` passes of training of the policy
  (and of a separate critic). Sampling is counted at its full length: the
  sampler decodes every row to max_new_tokens (responses that stopped early
  are masked, not skipped).
* release and evaluation-only stages: no training compute.

Evaluation inside and after each stage (held-out perplexity, judged
generation) is not in the FLOPs; it is in the wall seconds, which come from
the ledger. `real_scale_split` applies the same counting to a real recipe.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from gin import config_parser

from lifejax.model import flops
from lifejax.model.config import TransformerConfig
from lifejax.run.layout import LifecycleRoot, RunDir

LM_KINDS = ("pretrain", "sft")
# Chinchilla's compute-optimal rule of thumb (Hoffmann et al. 2022).
TOKENS_PER_PARAM = 20.0
RL_KINDS = ("ppo", "grpo")
NO_TRAINING = ("release",)


class _Ref(str):
  """A gin reference (@name or %macro) read from an operative config."""


class _Delegate(config_parser.ParserDelegate):

  def configurable_reference(self, scoped_name, evaluate):
    return _Ref("@" + scoped_name + ("()" if evaluate else ""))

  def macro(self, name):
    return _Ref("%" + name)


def read_bindings(path: str) -> dict[tuple[str, str, str], Any]:
  """(scope, configurable, parameter) -> value of every binding in a gin
  file (an operative config), parsed by gin's own parser without importing
  the configurables; references and macros come back as strings."""
  out = {}
  with open(path, encoding="utf-8") as f:
    try:
      for st in config_parser.ConfigParser(f, _Delegate()):
        if isinstance(st, config_parser.BindingStatement):
          out[(st.scope or "", st.selector, st.arg_name)] = st.value
    except SyntaxError as e:
      raise ValueError(f"{path}: cannot parse the operative config: {e}"
                       ) from e
  return out


_MISSING = object()


class Bindings:
  """Lookups in one stage's operative config: `get(scope, sel, arg)` is the
  scoped binding, else the unscoped one, else `default` (or an error naming
  the file and the binding)."""

  def __init__(self, path: str):
    self.path = path
    self.values = read_bindings(path)

  def get(self, scope: str, selector: str, arg: str,
          default: Any = _MISSING) -> Any:
    for key in ((scope, selector, arg), ("", selector, arg)):
      if key in self.values:
        return self.values[key]
    if default is _MISSING:
      raise ValueError(f"{self.path}: no binding for "
                       f"{scope + '/' if scope else ''}{selector}.{arg}")
    return default

  def model(self, scope: str = "", selector: str = "TransformerConfig"
            ) -> TransformerConfig:
    """The TransformerConfig bound under `selector` (scoped values win)."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    kw = {}
    for (sc, sel, arg), v in self.values.items():
      if sel == selector and arg in fields and not isinstance(v, _Ref) \
          and sc in ("", scope):
        if sc == scope or arg not in kw:
          kw[arg] = v
    if not kw:
      raise ValueError(f"{self.path}: no {selector} bindings")
    return TransformerConfig(**kw)


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """A forward pass: a third of the training count (module docstring)."""
  return flops.train_flops_per_token(cfg, seq_len) / 3.0


@dataclasses.dataclass
class StageCost:
  """One stage's work. FLOPs by kind of work: `train` (forward + backward
  of what the stage optimises), `frozen` (forwards of frozen models:
  the DPO reference, the RL scoring passes), `sample`
  (generation during training: RL rollouts). `tokens`: training tokens
  processed (padded rows x length, summed over the models trained)."""
  name: str
  kind: str
  seconds: float
  status: str
  train: float = 0.0
  frozen: float = 0.0
  sample: float = 0.0
  tokens: float = 0.0
  generated: float = 0.0
  steps: int = 0
  params: int = 0
  detail: str = ""

  @property
  def total(self) -> float:
    return self.train + self.frozen + self.sample

  def as_dict(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), total=self.total)


def _summary(run: RunDir) -> dict[str, Any]:
  if not os.path.exists(run.summary):
    raise ValueError(f"{run.summary}: missing (the stage did not finish)")
  with open(run.summary, encoding="utf-8") as f:
    return json.load(f)


def _metrics(run: RunDir) -> list[dict[str, Any]]:
  if not os.path.exists(run.metrics):
    return []
  with open(run.metrics, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _lm_stage(c: StageCost, b: Bindings, run: RunDir) -> None:
  cfg = b.model(c.name)
  rows = b.get(c.name, c.kind, "batch_size")
  seq = b.get(c.name, c.kind, "seq_len")
  steps = int(_summary(run)["final_step"])
  tokens = steps * rows * seq
  c.steps, c.params, c.tokens = steps, flops.matmul_params(cfg), tokens
  c.train = tokens * flops.train_flops_per_token(cfg, seq)
  c.detail = f"{steps} steps x {rows} rows x {seq} tokens"


def _pair_stage(c: StageCost, b: Bindings, run: RunDir) -> None:
  cfg = b.model(c.name)
  rows = b.get(c.name, c.kind, "batch_size")
  seq = b.get(c.name, c.kind, "seq_len")
  summary = _summary(run)
  steps = int(summary["final_step"])
  tokens = steps * rows * 2 * seq
  c.steps, c.params, c.tokens = steps, flops.matmul_params(cfg), tokens
  c.train = tokens * flops.train_flops_per_token(cfg, seq)
  c.detail = f"{steps} steps x {rows} pairs x 2 x {seq} tokens"
  if c.kind == "dpo" and "none" not in str(summary.get("reference_logps",
                                                        "")):
    # Precomputed once per training pair seen (at most the pairs trained on).
    c.frozen = tokens * forward_flops_per_token(cfg, seq)
    c.detail += "; reference log-probs once per pair"


def _rl_stage(c: StageCost, b: Bindings, run: RunDir) -> None:
  s = c.name
  cfg = b.model(s)
  rows = _metrics(run)
  iterations = int(max((r.get("iteration", 0) for r in rows), default=0))
  if not iterations:
    raise ValueError(f"{run.metrics}: no RL iteration logged")
  prompts = b.get(s, "RLLoopConfig", "prompts_per_iteration")
  epochs = b.get(s, "RLLoopConfig", "epochs")
  prompt_len = b.get(s, "RolloutConfig", "prompt_len")
  new = b.get(s, "RolloutConfig", "max_new_tokens")
  grpo = b.get(s, c.kind, "grpo_config", None)
  samples = b.get(s, "GRPOConfig", "group_size") if (
      c.kind == "grpo" or grpo) else 1
  seqs = iterations * prompts * samples
  length = prompt_len + new
  fwd = forward_flops_per_token(cfg, length)
  # Scoring forwards on each rollout: old log-probs and the reference; a
  # learned reward model; a separate critic (a shared-trunk critic's values
  # come with the policy's forward).
  scorers = ["policy", "reference"]
  if b.get(s, c.kind, "reward", None) == "reward_model":
    scorers.append("reward model")
  critic = not (c.kind == "grpo" or grpo) and b.get(
      s, c.kind, "value_model", "separate") == "separate"
  if critic:
    scorers.append("critic")
  trained = 2 if critic else 1
  c.steps, c.params = iterations, flops.matmul_params(cfg)
  c.sample = seqs * length * fwd
  c.frozen = seqs * length * fwd * len(scorers)
  c.tokens = seqs * length * epochs * trained
  c.train = c.tokens * flops.train_flops_per_token(cfg, length)
  c.generated = seqs * new
  c.detail = (f"{iterations} iterations x {prompts} prompts x {samples} "
              f"samples x ({prompt_len} + {new}) tokens; scoring: "
              f"{', '.join(scorers)}; {epochs} epochs x "
              f"{'policy + critic' if critic else 'policy'}")


def stage_costs(root: str) -> list[StageCost]:
  """The StageCost of every stage in the ledger of lifecycle root `root`
  (stages skipped on a rerun are counted from their earlier run)."""
  lr = LifecycleRoot(root)
  if not os.path.exists(lr.ledger):
    raise ValueError(f"{lr.ledger}: missing (not a lifecycle root)")
  with open(lr.ledger, encoding="utf-8") as f:
    ledger = json.load(f)
  out = []
  for st in ledger["stages"]:
    c = StageCost(st["name"], st["kind"], float(st.get("seconds", 0.0)),
                  st.get("status", ""))
    run = RunDir(os.path.join(lr.root, st["run_dir"]))
    if c.kind in NO_TRAINING:
      c.detail = "no training (evaluation, selection and cards)"
      out.append(c)
      continue
    b = Bindings(run.operative_gin)
    if c.kind in LM_KINDS:
      _lm_stage(c, b, run)
    elif c.kind in ("reward", "dpo"):
      _pair_stage(c, b, run)
    elif c.kind in RL_KINDS:
      _rl_stage(c, b, run)
    else:
      raise ValueError(f"{lr.ledger}: stage {c.name!r} of kind {c.kind!r}: "
                       "no cost model for this kind")
    out.append(c)
  return out


def shares(values: Sequence[float]) -> list[float]:
  total = float(sum(values))
  return [v / total if total else math.nan for v in values]


# -- a real recipe -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A lifecycle at real scale, by the same counting. `params`: N in the
  6 N D convention (matmul parameters ~ all parameters at this size).
  Token counts are per sequence length `seq`; RL as in _rl_stage with a
  separate critic and a learned reward model (PPO, one epoch)."""
  name: str
  params: float
  pretrain_tokens: float
  sft_examples: float
  sft_tokens_per_example: float
  sft_epochs: float
  comparisons: float
  comparison_tokens: float
  rl_prompts: float
  rl_tokens_per_sequence: float
  rl_epochs: float = 1.0
  source: str = ""


def recipe_flops(r: Recipe) -> dict[str, float]:
  """Training FLOPs per stage of a Recipe (6 N per trained token, 2 N per
  forward token; attention ignored: < 3% at these widths and lengths)."""
  n = r.params
  sft = 6 * n * r.sft_examples * r.sft_tokens_per_example * r.sft_epochs
  reward = 6 * n * r.comparisons * 2 * r.comparison_tokens
  seq_tokens = r.rl_prompts * r.rl_tokens_per_sequence
  # sampling + 4 scoring forwards + (policy + critic) x epochs of training
  ppo = 2 * n * seq_tokens * 5 + 6 * n * seq_tokens * 2 * r.rl_epochs
  return {"pretrain": 6 * n * r.pretrain_tokens, "sft": sft,
          "reward": reward, "ppo": ppo}


def _chinchilla_recipe(flops_budget: float, base: Recipe) -> Recipe:
  """`base`'s post-training recipe on the compute-optimal model of a
  pretraining budget, by the published Chinchilla law (tools/chinchilla.py
  uses the same law)."""
  from lifejax.eval import scaling  # pylint: disable=g-import-not-at-top
  n, d = scaling.compute_optimal(scaling.CHINCHILLA, flops_budget)
  return dataclasses.replace(base, name=f"Chinchilla-optimal at "
                             f"{flops_budget:.2e} FLOPs", params=float(n),
                             pretrain_tokens=float(d),
                             source=base.source + "; N, D from the published"
                             " Chinchilla law (approach 3)")


# Llama 2 70B (Touvron et al., 2023, the seeds' example in 002): 2T
# pretraining tokens and 27,540 SFT examples are the paper's (and 002's);
# 2 SFT epochs of 4,096-token packed rows are the paper's; the reward data
# (~2.9M comparisons, Meta's plus open sets) and the RL prompt counts are
# order-of-magnitude assumptions stated in README.md, not the paper's exact
# figures.
LLAMA2_70B = Recipe(
    name="Llama 2 70B", params=70e9, pretrain_tokens=2e12,
    sft_examples=27_540, sft_tokens_per_example=4096, sft_epochs=2,
    comparisons=2.9e6, comparison_tokens=1000, rl_prompts=1e6,
    rl_tokens_per_sequence=1000, rl_epochs=1,
    source="Touvron et al. 2023 (pretraining tokens, SFT examples and "
           "epochs); reward and RL data sizes assumed")


def real_scale_split(recipes: Sequence[Recipe] = (LLAMA2_70B,),
                     chinchilla_budgets: Sequence[float] = (3.14e23,)
                     ) -> list[dict[str, Any]]:
  """Each recipe's stage FLOPs and shares; plus LLAMA2_70B's post-training
  recipe on the Chinchilla-optimal model of each pretraining budget."""
  rows = []
  for r in list(recipes) + [_chinchilla_recipe(c, LLAMA2_70B)
                            for c in chinchilla_budgets]:
    f = recipe_flops(r)
    rows.append({"recipe": r.name, "params": r.params,
                 "pretrain_tokens": r.pretrain_tokens, "flops": f,
                 "shares": dict(zip(f, shares(list(f.values())))),
                 "source": r.source})
  return rows


def demo_explained(costs: Sequence[StageCost]) -> dict[str, float]:
  """The figures that say why the demo's split is not the real one."""
  by = {c.name: c for c in costs}
  out: dict[str, float] = {}
  pre = by.get("pretrain")
  if pre is not None and pre.params:
    out["pretrain_tokens"] = pre.tokens
    out["pretrain_tokens_per_param"] = pre.tokens / pre.params
  post = [c for c in costs if c.name != "pretrain" and c.tokens]
  if pre is not None and post:
    out["post_over_pretrain_tokens"] = sum(c.tokens for c in post) / \
        pre.tokens
  if pre is not None and pre.params and pre.tokens:
    # The same lifecycle with pretraining at Chinchilla's ~20 tokens per
    # parameter (FLOPs scale with tokens at a fixed model and length).
    scale = TOKENS_PER_PARAM * pre.params / pre.tokens
    others = sum(c.total for c in costs if c is not pre)
    out["pretrain_scale_to_20_tokens_per_param"] = scale
    out["pretrain_share_at_20_tokens_per_param"] = (
        pre.total * scale / (pre.total * scale + others))
  return out


def wall_known(costs: Sequence[StageCost]) -> bool:
  """False when a stage was skipped on a rerun: the ledger then holds 0 s
  for it (its time was spent by an earlier run), so no wall split."""
  return not any(c.status == "skipped" for c in costs)


def as_table(costs: Sequence[StageCost]) -> list[Mapping[str, Any]]:
  tot = shares([c.total for c in costs])
  known = wall_known(costs)
  sec = shares([c.seconds for c in costs]) if known else [math.nan] * len(
      costs)
  return [{"stage": c.name, "kind": c.kind,
           "wall s": round(c.seconds, 1) if c.status != "skipped" else
           "— (skipped: an earlier run's)",
           "wall share": f"{100 * s:.1f}%" if known else "—",
           "train tokens": f"{c.tokens:,.0f}",
           "FLOPs": f"{c.total:.3g}", "FLOPs share": f"{100 * t:.1f}%",
           "of which train / frozen / sample":
               f"{c.train:.2g} / {c.frozen:.2g} / {c.sample:.2g}",
           "work": c.detail}
          for c, t, s in zip(costs, tot, sec)]
