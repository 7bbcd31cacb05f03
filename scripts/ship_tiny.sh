#!/usr/bin/env bash
# Ship a pretraining checkpoint of the row reader as models/invoice-vlm-tiny: export it (bf16, processor, card),
# measure the exported weights, and export again with the measurements in the model card.
#   bash scripts/ship_tiny.sh [runs/invoice-vlm-tiny/checkpoint-N]      (default: the run's model/, else the newest
#                                                                       checkpoint)
# LIMIT=N measures on the first N pages of each set only (quick looks; the card says how many pages).
# AVERAGE="DIR ..." averages those checkpoints' weights in (export --average), e.g. the run's previous checkpoint.
set -euo pipefail
RUN=${RUN:-runs/invoice-vlm-tiny}
if [ $# -ge 1 ]; then CKPT=$1
elif [ -d "$RUN/model" ]; then CKPT=$RUN/model
else CKPT=$(ls -d $RUN/checkpoint-* | sort -t- -k3 -n | tail -1); fi
LIMIT=${LIMIT:-0}
BIN=.venv/bin
STAGE=$RUN/ship
# a rerun reuses finished evaluations: delete this folder after changing the code
EVALS=$RUN/evals/$(basename "$CKPT")${AVERAGE:+-avg}
L=classic,banner,header_band,letter,right_vendor,boxed,minimal,remittance,timesheet,two_party
LOC=en_US,en_GB,de_DE,fr_FR,es_ES,it_IT
echo "checkpoint: $CKPT  ->  $EVALS"
rm -rf "$STAGE"
AVG_FLAGS=()
for a in ${AVERAGE:-}; do AVG_FLAGS+=(--average "$a"); done
$BIN/invoice-vlm export --model "$CKPT" --out "$STAGE" --dtype bf16 --name invoice-vlm-tiny \
    --card configs/tiny/invoice-vlm-tiny.md "${AVG_FLAGS[@]}"
ev() { # name, then eval flags: every figure is of the exported bf16 weights
  local name=$1; shift
  [ -f "$EVALS/$name/metrics.json" ] || $BIN/invoice-vlm eval --model "$STAGE" --limit "$LIMIT" --out "$EVALS/$name" "$@"
}
# field scores come with every evaluation (the rule-based field reader on the transcription, as --task extract does)
ev synth-test-ocr --data data/pretrain --split test
ev real-invoices --data ../shared/data/real-invoices/manifest.jsonl
# 300 scanned-looking invoices of the pretraining distribution (another seed: invoices not trained on)
[ -f data/pretrain-scan/dataset.json ] || $BIN/invoice-vlm synth --out data/pretrain-scan --n 300 --seed 3 \
    --split test=1 --workers 2 --dpi 100 --augment scan --layouts $L --locales $LOC
ev synth-test-scan --data data/pretrain-scan --split test
# from the checkpoint again (the same bf16 bytes as $STAGE), so that the card says where the weights came from
$BIN/invoice-vlm export --model "$CKPT" "${AVG_FLAGS[@]}" --out models/invoice-vlm-tiny --dtype bf16 \
    --name invoice-vlm-tiny \
    --card configs/tiny/invoice-vlm-tiny.md --eval "$EVALS/synth-test-ocr" --eval "$EVALS/real-invoices" \
    --eval "$EVALS/synth-test-scan"
