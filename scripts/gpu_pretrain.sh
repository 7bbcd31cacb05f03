#!/usr/bin/env bash
# The embedded model's long run on one CUDA GPU: configs/tiny/pretrain.yaml in bf16 for a fixed time. A 7M-parameter
# model leaves most of an H200 idle: the CPU cores that render and preprocess its batches set the pace (about 4
# steps of 32 a second per run with 7 workers each, before batches carried their pages as uint8).
#   bash scripts/gpu_pretrain.sh                      # two big-glyph curricula side by side, BUDGET seconds each
#   bash scripts/gpu_pretrain.sh 'name|--set flags'   # plain runs of your own, side by side, BUDGET seconds each
# The curriculum (README, "The GPU runs"): one character 600-1000 px tall drawn one way, then 1-4 characters
# 150-300 px tall, then 1-10 at 40-120 px, then rows of random words at 14-40 px, then the config's pages; each stage
# starts from the last one's weights and gets a share of BUDGET (15/20/20/15/30%), plus about 30 s to start. After each glyph stage, scripts/glyph_gap.py measures whether
# it reads (image_gap, characters read right) into $OUT/<stage>.gap.md. START=<model folder> skips the first stage
# and starts the second from that model (one that already reads big glyphs, e.g. a CPU run's; `carry` it there).
# Then on any machine: bash scripts/ship_tiny.sh <the unpacked model folder> to measure it and ship it.
#
# On the `device` machines (no network): the packages the image lacks travel as wheels in .whl/ and the invoice
# fonts in .fonts/ (both git-ignored; made by `make gpu-carry`), and PYTHONPATH puts them first.
# Each run (for a curriculum, its last stage) comes back as <name>.tgz: bf16 weights, config, processor, and the
# records of every stage (run.json with versions and seed, time_budget.json, trainer_state.json with the losses).
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

GPU="--set sft.bf16=true --set sft.per_device_train_batch_size=32 --set sft.max_steps=100000 \
  --set repeat=16 --set sft.save_steps=250 --set eval.steps=400 --set eval.batch_size=16 --set sft.logging_steps=25 \
  --set sft.dataloader_num_workers=$WORKERS --set sft.report_to=none"
train() { # name, seconds, extra flags
  local name=$1 secs=$2; shift 2
  $PY -m invoice_vlm train --config configs/tiny/pretrain.yaml --name "$name" $GPU --set time_budget="$secs" "$@" \
      ${EXTRA:-} >"$OUT/$name.log" 2>&1
  echo "$name exit $?" >>"$OUT/env.txt"
}
gap() { # stage, glyph size min max, chars, [--fixed]
  $PY scripts/glyph_gap.py "runs/$1/model" --glyph-size "$2" "$3" --glyph-chars "$4" ${5:-} >"$OUT/$1.gap.md" 2>"$OUT/$1.gap.log"
}
GLYPHS="--set tasks.glyphs=1 --set tasks.lines=0 --set tasks.ocr=0 --set tasks.extract=0 --set eval.steps=0"
curriculum() { # name, flags for the first stage only (quoted, one word), flags for every stage
  local p=$1 s0=$2 first; shift 2
  if [ -n "${START:-}" ]; then  # a model that already reads big glyphs (a CPU run's stage 1): start at stage 2
    first=$START
    local s2=30 s3=30 s4=40
  else
    # stage 0: one big character in one font, size and place (glyph_fixed), the only setting where the tiny model
    # learned to read from scratch in a few hundred steps (README, "Why it does not read")
    train "$p-0" $((BUDGET * 15 / 100)) $GLYPHS --set "glyph_size=[600,1000]" --set glyph_chars=1 \
        --set glyph_fixed=true $s0 "$@"
    gap "$p-0" 600 1000 1 --fixed
    train "$p-1" $((BUDGET * 20 / 100)) $GLYPHS --set "glyph_size=[150,300]" --set glyph_chars=4 \
        --set model="runs/$p-0/model" "$@"
    gap "$p-1" 150 300 4
    first=runs/$p-1/model
    local s2=20 s3=15 s4=30
  fi
  train "$p-2" $((BUDGET * s2 / 100)) $GLYPHS --set "glyph_size=[40,120]" --set glyph_chars=10 \
      --set model="$first" "$@"
  gap "$p-2" 40 120 10
  train "$p-3" $((BUDGET * s3 / 100)) $GLYPHS --set "glyph_size=[14,40]" --set model="runs/$p-2/model" "$@"
  gap "$p-3" 14 40 0
  train "$p-4" $((BUDGET * s4 / 100)) --set tasks.glyphs=0.2 --set model="runs/$p-3/model" "$@"
}
NAMES=()
if [ $# -eq 0 ]; then
  # The leads (README, "Why it does not read"): from scratch the tiny model learned one character drawn one way
  # (stage 0) and, starting from that, characters in any font, size and place; and with the vision tower and
  # projector frozen at their random init the decoder turned to the image sooner.
  # cur-a: everything trains at the full rate; cur-b: stage 0 with the vision tower and projector frozen.
  ALL="--set vision_lr_scale=1.0 --set sft.warmup_steps=0.05"
  NAMES+=(cur-a-4 cur-b-4)
  curriculum cur-a "" $ALL &
  curriculum cur-b "--set freeze.vision=true --set freeze.projector=true" $ALL &
else
  for recipe in "$@"; do
    NAMES+=("${recipe%%|*}")
    train "${recipe%%|*}" "$BUDGET" ${recipe#*|} &
  done
fi
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
stages = [run]
if name.endswith("-4"):  # a curriculum's last stage: the records of its earlier stages too
    stages = [st for st in (Path("runs") / f"{name[:-2]}-{k}" for k in (0, 1, 2, 3)) if st.is_dir()] + [run]
for stage in stages:
    records = pack / "records" / stage.name
    records.mkdir(parents=True, exist_ok=True)
    for f in ("run.json", "time_budget.json", "train_result.json", "trainer_state.json"):
        if (stage / f).exists():
            shutil.copy(stage / f, records / f)
    states = sorted(stage.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if states and not (records / "trainer_state.json").exists():
        shutil.copy(states[-1], records / "trainer_state.json")
(records / "source.txt").write_text(str(src) + "\n")
with tarfile.open(out / f"{name}.tgz", "w:gz") as tar:
    tar.add(pack, arcname=name)
print(name, "packed from", src)
EOF
done
log "packed"
