#!/usr/bin/env bash
# The embedded model's long run on one CUDA GPU: configs/tiny/pretrain.yaml in bf16 for a fixed time, recipes side
# by side (a 7M-parameter model leaves most of an H200 idle: the CPU cores that render and preprocess its batches
# set the pace, about 4 steps of 32 a second per recipe with 7 workers each).
#   bash scripts/gpu_pretrain.sh                      # BUDGET=420 seconds of training per recipe, OUT=gpu-out
#   bash scripts/gpu_pretrain.sh 'name|--set flags'   # recipes of your own, side by side
# Then on any machine: bash scripts/ship_tiny.sh <the unpacked model folder> to measure it and ship it.
#
# On the `device` machines (no network): the packages the image lacks travel as wheels in .whl/ and the invoice
# fonts in .fonts/ (both git-ignored; made by `make gpu-carry`), and PYTHONPATH puts them first.
# Each recipe comes back as <name>.tgz: bf16 weights, config, processor, and the run's records (run.json with
# versions and seed, time_budget.json, trainer_state.json with the losses and evaluations).
set -uo pipefail
OUT=${OUT:-gpu-out}
BUDGET=${BUDGET:-420}
PAGES=${PAGES:-6400}
WORKERS=${WORKERS:-7}          # dataloader workers per recipe
PY=${PY:-python3}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

if [ -d .whl ] && [ "${INSTALL_WHEELS:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ -d .fonts ]; then mkdir -p /usr/share/fonts/truetype && cp -r .fonts/. /usr/share/fonts/truetype/; fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
$PY -c "import torch, transformers, trl, datasets, pyarrow, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'pillow', PIL.__version__)" 2>&1 | tee -a "$OUT/env.txt"
log "packages ready"

# The pretraining data (the command in configs/tiny/pretrain.yaml; same seed, so the same test split as elsewhere)
$PY -m invoice_vlm synth --out data/pretrain --n "$PAGES" --seed "${SEED:-1}" --split train=$((PAGES - 400)),validation=100,test=300 \
    --workers "$(nproc)" --dpi 100 --max-items 6 \
    --layouts classic,banner,header_band,letter,right_vendor,boxed,minimal,remittance,timesheet,two_party \
    --locales en_US,en_GB,de_DE,fr_FR,es_ES,it_IT >"$OUT/synth.log" 2>&1 || { tail -5 "$OUT/synth.log"; exit 1; }
cat data/pretrain/test/*/metadata.jsonl | md5sum | sed "s/-$/test split/" | tee -a "$OUT/env.txt"
log "synthetic invoices ready"

GPU="--set sft.bf16=true --set sft.per_device_train_batch_size=32 --set sft.max_steps=100000 --set time_budget=$BUDGET \
  --set repeat=16 --set sft.save_steps=250 --set eval.steps=400 --set eval.batch_size=16 --set sft.logging_steps=25 \
  --set sft.dataloader_num_workers=$WORKERS --set sft.report_to=none"
train() { # name, extra flags
  local name=$1; shift
  $PY -m invoice_vlm train --config configs/tiny/pretrain.yaml --name "$name" $GPU "$@" ${EXTRA:-} >"$OUT/$name.log" 2>&1
  echo "$name exit $?" >>"$OUT/env.txt"
}
# The recipes of the first H200 run (README, "The GPU runs"): 16 px and 32 px patches, the vision tower at 0.3x
[ $# -gt 0 ] || set -- "gpu-a|--set tiny.patch_size=16 --set vision_lr_scale=0.3 --set sft.warmup_steps=0.05" \
                       "gpu-b|--set vision_lr_scale=0.3 --set sft.warmup_steps=0.05"
NAMES=()
for recipe in "$@"; do
  NAMES+=("${recipe%%|*}")
  train "${recipe%%|*}" ${recipe#*|} &
done
wait
log "training done"

for name in "${NAMES[@]}"; do
  $PY - "$name" "$OUT" <<'EOF'
import shutil, sys, tarfile
from pathlib import Path
from safetensors.torch import load_file, save_file
name, out = sys.argv[1], Path(sys.argv[2])
run = Path("runs") / name
src = run / "model"
if not (src / "model.safetensors").exists():  # stopped before the end: the newest checkpoint
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        sys.exit(f"{run}: no model and no checkpoint")
    src = ckpts[-1]
pack = Path("/tmp/pack") / name
pack.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix in (".json", ".jinja") and f.name not in ("trainer_state.json",):
        shutil.copy(f, pack / f.name)
save_file({k: v.bfloat16() for k, v in load_file(src / "model.safetensors").items()}, pack / "model.safetensors",
          metadata={"format": "pt"})
records = pack / "records"
records.mkdir(exist_ok=True)
for f in ("run.json", "time_budget.json", "train_result.json"):
    if (run / f).exists():
        shutil.copy(run / f, records / f)
states = sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
if states:
    shutil.copy(states[-1], records / "trainer_state.json")
(records / "source.txt").write_text(str(src) + "\n")
with tarfile.open(out / f"{name}.tgz", "w:gz") as tar:
    tar.add(pack, arcname=name)
print(name, "packed from", src)
EOF
done
log "packed"
