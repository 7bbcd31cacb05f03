#!/usr/bin/env bash
# The GPU check a lent-GPU session runs as one prepared script (under 8 minutes on one H200):
#   (a) the engine on the GPU: invoice-vlm bench predict --device cuda
#   (b) invoice-vlm train, LoRA, on a random model of PaliGemma 2 3B-896's shapes (built here, offline, with the
#       project's tokenizer and the 257,216-token vocabulary), batch 1, gradient checkpointing, a few steps
#   (c) the same with QLoRA when bitsandbytes can be imported (its 43 MB wheel does not travel with `make gpu-carry`)
#   (d) the peak memory of each run (torch.cuda.max_memory_allocated / max_memory_reserved, nvidia-smi) against
#       preflight's estimate, and preflight's figures for the fp32 and bf16 bases
# Every result is JSON under $OUT (the device tool's output folder; ./gpu-out when unset).
#
#   make gpu-carry        # here: the wheels (.whl) and fonts (.fonts) the GPU image lacks
#   run: bash scripts/gpu_check.sh                (carry: .whl .fonts)
#   bash scripts/gpu_check.sh --dry-run           # on a CPU: the same steps at the tiny shapes, with .venv
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export USE_HUB_KERNELS=NO HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS=${STEPS:-4}
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/log.txt"; }
status() {  # name rc seconds: one line each in $OUT/steps.jsonl
  echo "{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3}" >> "$OUT/steps.jsonl"
}

if [ $DRY = 1 ]; then
  PY=${PY:-.venv/bin/python}
  SHAPE=tiny N=4 PAGES=4 NAIVE=2 DEVICE=cpu ROWS=64
  TRAIN_SETS=(--set sft.bf16=false --set sft.dataloader_num_workers=1)
else
  SHAPE=pg2-896 N=8 PAGES=96 NAIVE=4 DEVICE=cuda ROWS=512  # a row's text does not depend on its batch: a GPU takes many
  TRAIN_SETS=(--set sft.dataloader_num_workers=2)
  log "installing the carried wheels into a venv over the image's Python (its torch)"
  python3 -m venv --system-site-packages "$WORK/venv"
  PY="$WORK/venv/bin/python"
  "$PY" -m pip install --quiet --no-index --no-deps --find-links .whl .whl/*.whl 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  if [ -d .fonts ]; then  # the invoice fonts where invoice_vlm.synth.fonts looks for them
    for d in .fonts/*/; do
      dest="/usr/share/fonts/truetype/$(basename "$d")"
      mkdir -p "$dest" && cp -n "$d"* "$dest/"
    done
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
fi
"$PY" - <<'EOF' > "$OUT/environment.json" 2>>"$OUT/log.txt"
import importlib, importlib.metadata as m, json, sys, torch
mods = {}
for p in ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "tokenizers", "scipy",
          "PIL", "pypdfium2", "bitsandbytes"]:
    try:
        mods[p] = getattr(importlib.import_module(p), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - what is missing is the finding
        mods[p] = f"missing: {type(e).__name__}: {e}"[:200]
print(json.dumps({"python": sys.version, "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                  "modules": mods}, indent=1))
EOF
CLI=("$PY" -m invoice_vlm)

# (d, first half) preflight's figures for LoRA on an fp32 and a bf16 base, on a meta-device model (no memory)
t=$SECONDS
"$PY" scripts/gpu_check.py estimate --shape "$SHAPE" --out "$OUT/estimate.json" > /dev/null 2>>"$OUT/log.txt"
status estimate $? $((SECONDS - t))

# (a) the engine
log "engine: bench predict on $DEVICE"
t=$SECONDS
# The naive way (a generate() a row: on a GPU one small launch after another, 96 pages' rows would take most of the
# time) on $NAIVE pages only; the engine in this process (its pages prepared there), then with a reading worker a core,
# each preparing its pages and reading them with its own model on the GPU (infer.readers): one process's beam search
# alone, 58-62 ms a page on this CPU, would hold it near 10 pages/s
timeout 200 "${CLI[@]}" bench predict --device "$DEVICE" --n "$PAGES" --naive-pages "$NAIVE" --prep-workers "$(nproc)" \
  --row-batch-size "$ROWS" > "$OUT/bench-predict.txt" 2>&1
status bench_predict $? $((SECONDS - t))
tail -5 "$OUT/bench-predict.txt" | tee -a "$OUT/log.txt"

# data and the random model of PaliGemma 2 3B-896's shapes
t=$SECONDS
"${CLI[@]}" synth --out "$WORK/data" --n "$N" --dpi 100 --split train=1 --workers 2 > /dev/null 2>>"$OUT/log.txt"
"$PY" scripts/gpu_check.py build --out "$WORK/model" --shape "$SHAPE" 2>>"$OUT/log.txt" | tee "$OUT/model.json"
status build $? $((SECONDS - t))

# (b) LoRA, (c) QLoRA: each in its own process, so that each peak is its own
for method in lora qlora; do
  if [ "$method" = qlora ]; then
    if [ $DRY = 1 ]; then
      echo '{"skipped": "QLoRA needs CUDA (bitsandbytes 4-bit)"}' > "$OUT/train-qlora.json"; continue
    fi
    if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then
      echo '{"skipped": "bitsandbytes is not on the image; its 43 MB wheel does not fit the 64 MiB carry"}' \
        > "$OUT/train-qlora.json"; log "qlora skipped: no bitsandbytes"; continue
    fi
  fi
  log "train $method ($SHAPE, $STEPS steps, batch 1, gradient checkpointing)"
  t=$SECONDS
  timeout 240 "$PY" scripts/gpu_check.py train --out "$OUT/train-$method.json" -- \
    --config "configs/paligemma2-3b-pt-896/$method.yaml" --model "$WORK/model" --data "$WORK/data" \
    --name "check-$method" --output-root "$WORK/runs" --max-steps "$STEPS" --eval-steps 0 \
    --set sft.gradient_accumulation_steps=1 --set sft.per_device_train_batch_size=1 \
    --set sft.gradient_checkpointing=true --set sft.report_to=none --set sft.save_steps=100000 \
    --set sft.logging_steps=1 "${TRAIN_SETS[@]}" >> "$OUT/log.txt" 2>&1
  status "train_$method" $? $((SECONDS - t))
  cp "$WORK/runs/check-$method/run.json" "$OUT/run-$method.json" 2>/dev/null
  tail -1 "$OUT/train-$method.json" 2>/dev/null; echo
done
rm -rf "$WORK"
log "done: $(ls "$OUT" | tr '\n' ' ')"
