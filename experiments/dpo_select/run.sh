#!/usr/bin/env bash
# Which DPO learning rate and length beat SFT, chosen on the dev prompts?
# From one lifecycle root's SFT model (BASE, default the demo's
# runs/lifecycle), DPO on the world's training pairs exactly as the
# lifecycle's DPO stage runs it (lifecycle/default.gin's dpo bindings: beta
# 0.1, batch 8 x 256 tokens, warmup 5, bf16 compute) at each ARMS entry
# "learning_rate:steps"; then every arm is judged against SFT on the dev
# prompts (evaluate.py --split=validation -> dev.md), the best dev win rate
# is picked, and only the picked arm is judged on the test prompts
# (-> test.md). Nothing on test is looked at before the pick.
#   BASE=runs/lifecycle  OUT=runs/dpo_select  ARMS="1e-5:40 5e-5:40 ..."
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
BASE=${BASE:-runs/lifecycle}
OUT=${OUT:-runs/dpo_select}
ARMS=${ARMS:-1e-5:40 5e-5:40 2e-4:40 5e-5:120}
HERE=experiments/dpo_select
runs=()
for arm in $ARMS; do
  IFS=: read -r lr steps <<< "$arm"
  dir="$OUT/lr${lr}_s${steps}"
  if [ ! -f "$dir/summary.json" ]; then
    $PY -m lifejax.main --gin_file=stages/dpo.gin \
      --gin_param="TransformerConfig.compute_dtype='bfloat16'" \
      --gin_param="dpo.run_dir='$dir'" \
      --gin_param="dpo.init_from='$BASE/sft'" \
      --gin_param="dpo.train_files=['$BASE/world/preferences/train.jsonl']" \
      --gin_param="dpo.eval_file='$BASE/world/preferences/validation.jsonl'" \
      --gin_param="dpo.prompt_file='$BASE/world/instructions/validation.jsonl'" \
      --gin_param="dpo.batch_size=8" --gin_param="dpo.seq_len=256" \
      --gin_param="dpo.eval_prompts=12" \
      --gin_param="dpo.loss_hparams={'beta': 0.1}" \
      --gin_param="OptimizerConfig.learning_rate=$lr" \
      --gin_param="OptimizerConfig.warmup_steps=5" \
      --gin_param="NUM_STEPS=$steps" \
      --gin_param="LoopConfig.eval_every=$steps" \
      --gin_param="LoopConfig.eval_batches=4" \
      --gin_param="LoopConfig.eval_at_start=False" \
      --gin_param="GenerationSpec.max_new_tokens=64" \
      --gin_param="GenerationSpec.batch_size=24"
  fi
  runs+=("--run=DPO lr $lr, $steps steps=$dir")
done
$PY experiments/preference/evaluate.py --root="$BASE" --split=validation \
  --records=216 --out="$HERE/dev.md" --by="$HERE/run.sh" \
  --title="DPO from $BASE/sft: dev prompts (selection)" "${runs[@]}"
picked=$($PY "$HERE/pick.py" "$HERE/dev.md")
echo "picked on dev: $picked"
$PY experiments/preference/evaluate.py --root="$BASE" --split=test \
  --records=216 --out="$HERE/test.md" --by="$HERE/run.sh" \
  --title="DPO from $BASE/sft: test prompts (the dev pick only)" \
  "--run=$picked"
