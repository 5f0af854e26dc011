"""Reinforcement learning from a fine-tuned policy.

  rollout.py  prompts -> sampled responses -> fixed-shape LM rows with policy
              and reference log-probs, values and a score (reward model or
              programmatic judge); the per-iteration sample metrics.
  layout.py   where policy (+ critic) sit in the trained params, and the
              forwards a rollout needs (samples, log-probs, values).
  iteration.py  the RL iteration as minibatches for the one training
              engine (`train.loop`): rollouts from the current policy,
              prepared by the algorithm, resumable at iteration boundaries.
  ppo.py      PPO: KL-shaped rewards, GAE, the KL controller.
  grpo.py     GRPO and its family (DAPO, Dr. GRPO, GSPO options):
              group-relative advantages, no critic.
  dynamic_sampling.py  DAPO's dynamic sampling: drop flat groups, refill.
  monitors.py  policy entropy and KL-to-reference alerts.
  rlaif.py    on-policy preference pairs labelled by a judge, for DPO.

The losses themselves are the registered ones in `lifejax.losses`; the
gin-configured entry points are `lifejax.stages.rl.{ppo, grpo, rlaif}`.
"""
