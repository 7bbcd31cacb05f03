#!/usr/bin/env bash
# Measure a pretraining checkpoint and ship it as models/invoice-vlm-tiny (bf16, processor, model card with the
# numbers, training curve in docs/).
#   bash scripts/ship_tiny.sh [runs/pretrain-tiny/checkpoint-N]      (default: the newest checkpoint)
# Set LIMIT=N to measure on the first N pages of each set only (quick looks; the card says how many pages).
set -euo pipefail
RUN=runs/pretrain-tiny
CKPT=${1:-$(ls -d $RUN/checkpoint-* | sort -t- -k3 -n | tail -1)}
LIMIT=${LIMIT:-0}
BIN=.venv/bin
EVALS=$RUN/evals/$(basename "$CKPT")
echo "checkpoint: $CKPT  ->  $EVALS"
ev() { # name, then eval flags
  local name=$1; shift
  [ -f "$EVALS/$name/metrics.json" ] || $BIN/invoice-vlm eval --model "$CKPT" --limit "$LIMIT" --batch-size 16 \
      --out "$EVALS/$name" "$@"
}
ev synth-test-ocr --data data/pretrain --split test
ev synth-test-extract --data data/pretrain --split test --task extract
# 300 scanned-looking invoices of the pretraining distribution (another seed: invoices not trained on)
$BIN/invoice-vlm synth --out data/pretrain-scan --n 300 --seed 2 --split test=1 --workers 2 --dpi 100 --max-items 6 \
    --augment scan \
    --layouts classic,banner,header_band,letter,right_vendor,boxed,minimal,remittance,timesheet,two_party \
    --locales en_US,en_GB,de_DE,fr_FR,es_ES,it_IT
ev synth-test-scan --data data/pretrain-scan --split test
ev real-invoices --data ../shared/data/real-invoices/manifest.jsonl --max-new-tokens 1024
$BIN/invoice-vlm export --model "$CKPT" --out models/invoice-vlm-tiny --dtype bf16 --name invoice-vlm-tiny \
    --card configs/tiny/invoice-vlm-tiny.md --eval "$EVALS/synth-test-ocr" --eval "$EVALS/synth-test-extract" \
    --eval "$EVALS/synth-test-scan" --eval "$EVALS/real-invoices"
$BIN/python scripts/training_curve.py $RUN docs/pretrain-curve.png
