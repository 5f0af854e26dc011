#!/usr/bin/env bash
# The copy-probe experiment (issue 6): why the SFT model does not copy names,
# days and numbers out of the prompt, and what did not fix it at the demo
# budget. Each arm runs pretraining + SFT (no DPO/PPO) from the repo root.
# ~8 min per arm on a quiet 2-core CPU (the 512-token arms ~2x that).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
run() {  # run <root> [gin params...]
  local root=$1; shift
  $PY -m lifejax.main --gin_file=lifecycle/default.gin \
    --gin_param="lifecycle.root='$root'" --gin_param="lifecycle.run_dpo=False" \
    --gin_param="lifecycle.run_ppo=False" \
    --gin_param="pretrain/CheckpointConfig.every_steps=100" \
    --gin_param="pretrain/CheckpointConfig.keep_last=5" "$@"
}
# Mail threads in pretraining (the default since world format 2).
run runs/copy_mail
# The same with 256- and 512-token pretraining windows (same tokens/step),
# mail upsampled 2x in the 512 arm.
run runs/copy_mail256 --gin_param="pretrain.seq_len=256" --gin_param="pretrain.batch_size=8"
run runs/copy_mail512 --gin_param="pretrain.seq_len=512" --gin_param="pretrain.batch_size=4" \
  --gin_param="lifecycle.source_weights={'mail': 2.0}"
# (Recorded too: the 512 arm with mail 3x and a 1000-step schedule, stopped
# by hand at step 300: add --gin_param="pretrain/OptimizerConfig.total_steps=1000"
# --gin_param="pretrain/LoopConfig.num_steps=1000".)
seed() {  # seed <root> <from>: start <root> from <from>'s world and curated data
  mkdir -p "$1"
  [ -d "$1/world" ] || cp -r "$2/world" "$2/curated" "$1/"
}
steps() {  # steps <n> [eval_every]: a pretraining schedule of n steps
  echo --gin_param="pretrain/OptimizerConfig.total_steps=$1" \
    --gin_param="pretrain/LoopConfig.num_steps=$1" \
    --gin_param="pretrain/LoopConfig.eval_every=${2:-$1}"
}
DRILLS=--gin_param="lifecycle.pretrain_sources=['wiki', 'support_chat', 'records', 'mail', 'web', 'drills']"
SMEAR=--gin_param="TransformerConfig.smear_keys=True"
# A copy curriculum: repeated random lists at 8.5% and 50% of the stream.
for arm in "drill 0.093" "drill50 1.0"; do
  set -- $arm
  seed runs/copy_$1 runs/copy_mail
  $PY experiments/copy_probe/add_drills.py runs/copy_$1/curated $2
  run runs/copy_$1 "$DRILLS"
done
# The 50% drill arm again with a 1000-step pretraining schedule.
seed runs/copy_drill50_long runs/lifecycle_v2
$PY experiments/copy_probe/add_drills.py runs/copy_drill50_long/curated 1.0
run runs/copy_drill50_long "$DRILLS" $(steps 1000) \
  --gin_param="pretrain/CheckpointConfig.keep_last=12"
# 20,000 distinct drills (no drill repeats across epochs), 600 steps.
seed runs/copy_drillfresh runs/lifecycle_v2
$PY experiments/copy_probe/add_drills.py runs/copy_drillfresh/curated 1.0 20000
run runs/copy_drillfresh "$DRILLS" $(steps 600) \
  --gin_param="pretrain/CheckpointConfig.keep_last=12"
# Smeared keys (TransformerConfig.smear_keys): the demo, and the 50% drill
# arm, with a previous-token path built into every attention layer.
seed runs/copy_smear runs/lifecycle_v2
run runs/copy_smear "$SMEAR"
seed runs/copy_smear_drill50 runs/copy_drill50_long  # its curated data has the drills
run runs/copy_smear_drill50 "$SMEAR" "$DRILLS"
# Smeared keys with 10x the demo's pretraining (3000 steps, ~36 min).
seed runs/copy_smear_long runs/lifecycle_v2
run runs/copy_smear_long "$SMEAR" $(steps 3000 1000) \
  --gin_param="pretrain/CheckpointConfig.every_steps=500" \
  --gin_param="pretrain/CheckpointConfig.keep_last=7"
# The pure copy task (seconds for the small shapes, ~3 min for the demo's).
for shape in "--layers=1" "--layers=2" "--layers=8 --d_model=256 --heads=8 --mlp=768"; do
  for s in "" "--smear"; do $PY experiments/copy_probe/toy_copy.py $shape $s; done
done
# The probes, on every pretrained checkpoint kept and on the SFT models.
$PY experiments/copy_probe/probe.py \
  runs/lifecycle_v2/pretrain runs/lifecycle_v2/sft \
  runs/copy_mail256/pretrain runs/copy_mail256/sft \
  runs/copy_mail512/pretrain \
  runs/copy_drill/pretrain@100 runs/copy_drill/pretrain@200 runs/copy_drill/pretrain@300 \
  runs/copy_drill50/pretrain@100 runs/copy_drill50/pretrain@200 runs/copy_drill50/pretrain@300 \
  runs/copy_drill50_long/pretrain@300 runs/copy_drill50_long/pretrain@600 \
  runs/copy_drill50_long/pretrain@1000 \
  runs/copy_drillfresh/pretrain@300 runs/copy_drillfresh/pretrain@600 \
  runs/copy_smear/pretrain runs/copy_smear/sft \
  runs/copy_smear_drill50/pretrain@100 runs/copy_smear_drill50/pretrain@200 \
  runs/copy_smear_drill50/pretrain@300 \
  runs/copy_smear_long/pretrain@500 runs/copy_smear_long/pretrain@1000 \
  runs/copy_smear_long/pretrain@1500 runs/copy_smear_long/pretrain@2000 \
  runs/copy_smear_long/pretrain@3000 runs/copy_smear_long/sft
