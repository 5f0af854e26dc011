#!/usr/bin/env bash
# Which preference-tuning budget removes the SFT model's habits, chosen on
# the dev prompts? From a demo_habits root's SFT model and reward model
# (run.sh), each ARMS entry trains one arm exactly as the lifecycle's stage
# of that kind runs (lifecycle/fact_world.gin's bindings, in the stage's gin
# scope), changing only what the entry names:
#   ppo:ITERATIONS[:TOKENS]  PPO on the reward model (the demo: 6 iterations
#                         of 16 prompts, rollouts of 48 new tokens;
#                         everything else the demo's)
#   online:LR:ROUNDS      online DPO: each round the current policy answers
#                         32 training prompts 4 times (T 1, 48 tokens), the
#                         reward model labels best against worst, 10 DPO
#                         steps (beta 0.1, batch 8) on the kept pairs;
#                         reference = the SFT model
# Every arm is judged against SFT on the 216 dev prompts
# (experiments/preference/evaluate.py --split=validation -> dev.md), the
# best dev win rate is picked (experiments/dpo_select/pick.py, which refuses
# rows of another split), and only the pick is judged on the test prompts
# (-> test.md); habits.py then counts its habit flaws on test.
# DEV_ONLY=1 stops after the dev table (ablations that select nothing;
# DEV names the table, default dev.md).
#   ROOT=runs/demo_habits/seed0  OUT=runs/demo_habits/select
#   ARMS="ppo:24 online:1e-5:4 online:5e-5:4 ppo:24:64"
#   HABITS=True (False: a root of make demo's own world, e.g.
#   ROOT=runs/fact_world, whose world has no demo habits)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
ROOT=${ROOT:-runs/demo_habits/seed0}
OUT=${OUT:-runs/demo_habits/select}
ARMS=${ARMS:-ppo:24 online:1e-5:4 online:5e-5:4 ppo:24:64}
HERE=experiments/demo_habits
DEV=${DEV:-$HERE/dev.md}
HABITS=${HABITS:-True}
COMMON=(--gin_file=lifecycle/fact_world.gin
        --gin_param="lifecycle.world_demo_habits=$HABITS")
runs=()
for arm in $ARMS; do
  IFS=: read -r kind a b <<< "$arm"
  case $kind in
    ppo)
      dir="$OUT/ppo_it$a${b:+_tok$b}"; label="PPO, $a iterations${b:+, $b-token rollouts}"
      [ -f "$dir/summary.json" ] || "$PY" -m lifejax.main "${COMMON[@]}" \
        --gin_param="run.stage=@ppo/ppo" \
        --gin_param="ppo.run_dir='$dir'" \
        --gin_param="ppo.sft_run='$ROOT/sft'" \
        --gin_param="ppo.reward_run='$ROOT/reward'" \
        --gin_param="ppo.prompt_files=['$ROOT/world/instructions/train.jsonl']" \
        --gin_param="ppo.model=@TransformerConfig()" \
        --gin_param="ppo.mesh=@MeshConfig()" \
        --gin_param="ppo/RLLoopConfig.num_iterations=$a" \
        --gin_param="ppo/RolloutConfig.max_new_tokens=${b:-48}"
      ;;
    online)
      dir="$OUT/online_lr${a}_r$b"; label="online DPO (RM labels), lr $a, $b rounds"
      steps=$((b * 10))
      [ -f "$dir/summary.json" ] || "$PY" -m lifejax.main "${COMMON[@]}" \
        --gin_param="run.stage=@dpo/online_dpo" \
        --gin_param="online_dpo.run_dir='$dir'" \
        --gin_param="online_dpo.init_from='$ROOT/sft'" \
        --gin_param="online_dpo.prompt_files=['$ROOT/world/instructions/train.jsonl']" \
        --gin_param="online_dpo.eval_file='$ROOT/world/preferences/validation.jsonl'" \
        --gin_param="online_dpo.prompt_file='$ROOT/world/instructions/validation.jsonl'" \
        --gin_param="online_dpo.judge='reward_model'" \
        --gin_param="online_dpo.reward_run='$ROOT/reward'" \
        --gin_param="online_dpo.model=@TransformerConfig()" \
        --gin_param="online_dpo.mesh=@MeshConfig()" \
        --gin_param="online_dpo.optimizer=@OptimizerConfig()" \
        --gin_param="online_dpo.loop=@LoopConfig()" \
        --gin_param="online_dpo.checkpoint=@CheckpointConfig()" \
        --gin_param="online_dpo.online=@OnlineDPOConfig()" \
        --gin_param="online_dpo.pairs=@RLAIFConfig()" \
        --gin_param="online_dpo.rollout=@RolloutConfig()" \
        --gin_param="online_dpo.generation=@GenerationSpec()" \
        --gin_param="online_dpo.loss_hparams={'beta': 0.1}" \
        --gin_param="online_dpo.batch_size=8" \
        --gin_param="online_dpo.seq_len=304" \
        --gin_param="online_dpo.eval_prompts=12" \
        --gin_param="OnlineDPOConfig.prompts_per_round=32" \
        --gin_param="OnlineDPOConfig.steps_per_round=10" \
        --gin_param="RLAIFConfig.samples_per_prompt=4" \
        --gin_param="RLAIFConfig.prompts_per_batch=16" \
        --gin_param="dpo/OptimizerConfig.learning_rate=$a" \
        --gin_param="dpo/OptimizerConfig.total_steps=$steps" \
        --gin_param="dpo/LoopConfig.num_steps=$steps" \
        --gin_param="dpo/LoopConfig.eval_every=$steps" \
        --gin_param="dpo/CheckpointConfig.every_steps=10"
      ;;
    *) echo "unknown arm kind '$kind' in ARMS entry '$arm'" >&2; exit 2 ;;
  esac
  runs+=("--run=$label=$dir")
done
$PY experiments/preference/evaluate.py --root="$ROOT" --split=validation \
  --records=216 --out="$DEV" --by="$HERE/select.sh" \
  --title="Preference tuning from $ROOT/sft: dev prompts (selection)" \
  "${runs[@]}"
[ -z "${DEV_ONLY:-}" ] || exit 0
picked=$($PY experiments/dpo_select/pick.py "$DEV")
echo "picked on dev: $picked"
$PY experiments/preference/evaluate.py --root="$ROOT" --split=test \
  --records=216 --out="$HERE/test.md" --by="$HERE/select.sh" \
  --title="Preference tuning from $ROOT/sft: test prompts (the dev pick only)" \
  --answers "--run=$picked"
$PY "$HERE/habits.py" "$ROOT" sft ppo \
  --answers="picked=${picked#*=}/test_answers.jsonl" \
  --out="$HERE/select_habits.md"
