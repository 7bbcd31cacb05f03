"""Bake-off for the embedded reader: which architecture, trained from scratch on this CPU, reads a text row first.

Every candidate is a model class plain transformers builds, saves and loads (no remote code); each gets the same
rows (32 px high, 46 fonts at 14-20 px, random words, invoice words, amounts, symbols, up to 32 characters), the
same batches in the same order, the same optimiser (AdamW 1e-3, 100 warm-up steps, clip 1.0), the same threads
and the same minutes. ``--ctc W`` adds a CTC loss of weight W on the image tokens the decoder sees (a training-only
linear head over each token column), the encoder's direct signal while the decoder still guesses.

    python scripts/bakeoff_rows.py --arch fastvlm --ctc 1 --minutes 20 --threads 1 --out docs/bakeoff/fastvlm-ctc.json

Prints, at fixed times, the loss and greedy CER of the decoder (and of the CTC read-out) on 64 held-out rows;
writes the curve, seconds per step, parameters and bf16 bytes to ``--out``. docs/embedded-model.md holds the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import string
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

CHARS = string.ascii_letters + string.digits + " .,:;-/€$%#()&'+*@"
VOCAB = ["<pad>", "<eos>", "<bos>", "<image>"] + list(CHARS)
IDX = {c: i for i, c in enumerate(VOCAB)}
PAD, EOS, BOS, IMG = 0, 1, 2, 3
WORDS = ("Invoice Date Due Total Subtotal Tax VAT Amount Qty Quantity Unit Price Description Item Net Gross Payment "
         "Terms Bank Account IBAN BIC Customer Vendor Bill To Ship Order Number Rechnung Datum Betrag Summe Facture "
         "Montant Fattura Importo Factura Fecha Service Consulting Hours Rate Discount Balance").split()
H, W, MAXLEN = 32, 512, 32


def fonts() -> list[str]:
    found = sorted(glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True))
    return [f for f in found if not any(x in f.lower() for x in ("italic", "oblique", "symbol"))]


def rand_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.35:
            parts.append("".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 9))))
        elif r < 0.6:
            parts.append(rng.choice(WORDS))
        elif r < 0.8:
            parts.append(f"{rng.randint(0, 99999):,}.{rng.randint(0, 99):02d}".replace(",", rng.choice([",", ".", ""])))
        else:
            pool = CHARS[52:] if rng.random() < .5 else CHARS
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))).strip() or "x")
    return " ".join(parts)[:MAXLEN].strip() or "x"


def render(rng: random.Random, text: str, font_files: list[str]):
    for _ in range(20):
        font = ImageFont.truetype(rng.choice(font_files), rng.randint(14, 20))
        left, top, right, bottom = font.getbbox(text)
        if right - left + 4 <= W and bottom - top <= H:
            break
        text = text[: max(1, len(text) - 4)].strip() or "x"
    im = Image.new("L", (W, H), 255)
    x = rng.randint(0, max(0, W - (right - left) - 2)) if rng.random() < 0.5 else rng.randint(0, 8)
    y = rng.randint(0, max(0, H - (bottom - top))) - top
    ImageDraw.Draw(im).text((x - left, y), text, font=font, fill=rng.randint(0, 80))
    return torch.from_numpy((255 - np.asarray(im, dtype=np.float32)) / 255.0), text  # paper 0, ink ~1


def batch(rng, n, font_files):
    ims, texts = zip(*(render(rng, rand_text(rng), font_files) for _ in range(n)))
    return torch.stack(ims)[:, None], list(texts)


# --------------------------------------------------------------------------------------------- candidates
# Each returns (model, grid (rows, cols) of its image tokens, forward(pix, texts) -> (loss, tokens), greedy).

def qwen2(vocab: int):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=64, vocab_size=vocab, max_position_embeddings=512,
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=True)


def build_fastvlm():
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, ResNetConfig

    vision = ResNetConfig(num_channels=1, embedding_size=32, hidden_sizes=[64, 128, 256], depths=[1, 1, 1],
                          layer_type="basic", downsample_in_first_stage=False)
    vision.hidden_size = vision.hidden_sizes[-1]  # FastVLM's projector reads the tower's width from here
    grid = (H // 16, W // 16)
    cfg = FastVlmConfig(vision_config=vision, text_config=qwen2(len(VOCAB)), image_token_index=IMG,
                        image_seq_length=grid[0] * grid[1])
    return FastVlmForConditionalGeneration(cfg), grid


def build_paligemma_p8():
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    grid = (H // 8, W // 8)  # 4 x 64 = 256 patches = 16^2: SigLIP's square position table fits a 32x512 row
    vision = SiglipVisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                                image_size=16 * 8, patch_size=8, vision_use_head=False, num_channels=1)
    text = GemmaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=64, vocab_size=len(VOCAB), pad_token_id=PAD,
                       bos_token_id=BOS, eos_token_id=EOS, max_position_embeddings=512)
    cfg = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=IMG, vocab_size=len(VOCAB),
                          projection_dim=256, hidden_size=256)
    return PaliGemmaForConditionalGeneration(cfg), grid


def build_florence2():
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    vision = Florence2VisionConfig(in_channels=1, depths=(1, 1, 2), patch_size=(7, 3, 3), patch_stride=(4, 2, 2),
                                   patch_padding=(3, 1, 1), patch_prenorm=(False, True, True), embed_dim=(32, 64, 192),
                                   num_heads=(1, 2, 4), num_groups=(1, 2, 4), window_size=4, drop_path_rate=0.0,
                                   projection_dim=256)
    text = BartConfig(d_model=256, encoder_layers=2, decoder_layers=4, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, vocab_size=len(VOCAB),
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
                      forced_eos_token_id=None, max_position_embeddings=512)
    cfg = Florence2Config(vision_config=vision, text_config=text, image_token_id=IMG)
    return Florence2ForConditionalGeneration(cfg), (H // 16, W // 16)


BUILDERS = {"fastvlm": build_fastvlm, "paligemma-p8": build_paligemma_p8, "florence2": build_florence2}


def decoder_only_inputs(n_img: int, texts: list[str], prefix_types: bool):
    seqs = [[IDX[c] for c in t] + [EOS] for t in texts]
    L = n_img + 1 + max(map(len, seqs))
    ids = torch.full((len(texts), L), PAD)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :n_img] = IMG
        ids[i, n_img] = BOS
        ids[i, n_img + 1:n_img + 1 + len(s)] = torch.tensor(s)
        labels[i, n_img + 1:n_img + 1 + len(s)] = torch.tensor(s)  # causal LMs shift inside the model
        mask[i, :n_img + 1 + len(s)] = 1
        types[i, n_img + 1:n_img + 1 + len(s)] = 1
    out = dict(input_ids=ids, labels=labels, attention_mask=mask)
    if prefix_types:
        out["token_type_ids"] = types
    return out


def image_tokens(arch: str, model, pix):
    if arch == "florence2":
        return model.model.get_image_features(pix).pooler_output
    return model.model.get_image_features(pixel_values=pix).pooler_output


def forward(arch: str, model, n_img: int, pix, texts):
    if arch == "florence2":
        seqs = [[IDX[c] for c in t] + [EOS] for t in texts]
        L = max(map(len, seqs))
        labels = torch.full((len(texts), L), -100)
        for i, s in enumerate(seqs):
            labels[i, :len(s)] = torch.tensor(s)
        ids = torch.full((len(texts), n_img), IMG)
        out = model(input_ids=ids, pixel_values=pix, labels=labels, output_hidden_states=False)
        return out.loss
    inputs = decoder_only_inputs(n_img, texts, prefix_types=arch.startswith("paligemma"))
    return model(pixel_values=pix, **inputs).loss


@torch.no_grad()
def greedy(arch: str, model, n_img: int, pix) -> list[str]:
    model.eval()
    n = pix.shape[0]
    if arch == "florence2":
        out = model.generate(input_ids=torch.full((n, n_img), IMG), pixel_values=pix, max_new_tokens=MAXLEN + 1,
                             do_sample=False, num_beams=1)
    else:
        ids = torch.cat([torch.full((n, n_img), IMG), torch.full((n, 1), BOS)], 1)
        extra = {"token_type_ids": torch.zeros_like(ids)} if arch.startswith("paligemma") else {}
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix,
                             max_new_tokens=MAXLEN + 1, do_sample=False, eos_token_id=EOS, pad_token_id=PAD, **extra)
        out = out[:, ids.shape[1]:]
    model.train()
    texts = []
    for row in out.tolist():
        chars = []
        for t in row:
            if t == EOS:
                break
            if t > IMG:
                chars.append(VOCAB[t])
        texts.append("".join(chars))
    return texts


def cer(refs, hyps) -> float:
    import jiwer

    return jiwer.cer(refs, [h if h else " " for h in hyps])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(BUILDERS), required=True)
    ap.add_argument("--ctc", type=float, default=0.0)
    ap.add_argument("--up", type=int, default=4, help="CTC frames per token column")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--eval-seconds", type=float, default=240)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    font_files = fonts()
    model, (gh, gw) = BUILDERS[args.arch]()
    n_img = image_tokens(args.arch, model, torch.zeros(1, 1, H, W)).shape[1]
    head = torch.nn.Linear(gh * model.config.get_text_config().hidden_size if args.arch != "florence2" else gh * 256,
                           args.up * (len(VOCAB) + 1))
    blank = len(VOCAB)
    params = list(model.parameters()) + (list(head.parameters()) if args.ctc else [])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ctc={args.ctc}: {n_params / 1e6:.2f}M parameters, {n_img} image tokens (grid {gh}x{gw})",
          flush=True)
    eval_pix, eval_texts = batch(random.Random(12345), 64, font_files)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    rng = random.Random(args.seed + 1)
    curve, losses, ctcs, step_times = [], [], [], []
    t0 = time.time()
    next_eval = args.eval_seconds
    step = 0

    def ctc_columns(tokens):
        B = tokens.shape[0]
        tokens = tokens[:, 1:] if args.arch == "florence2" else tokens  # Florence-2 puts a pooled token first
        grid = tokens.reshape(B, gh, gw, -1).permute(0, 2, 1, 3).reshape(B, gw, -1)
        return head(grid).view(B, gw * args.up, len(VOCAB) + 1)

    while True:
        elapsed = time.time() - t0
        if elapsed >= next_eval or elapsed >= args.minutes * 60:
            hyp = greedy(args.arch, model, n_img, eval_pix)
            point = {"seconds": round(elapsed), "step": step, "loss": float(np.mean(losses[-50:])) if losses else None,
                     "cer": round(cer(eval_texts, hyp), 4), "exact": sum(a == b for a, b in zip(eval_texts, hyp))}
            if args.ctc:
                with torch.no_grad():
                    model.eval()
                    best = ctc_columns(image_tokens(args.arch, model, eval_pix)).argmax(-1)
                    model.train()
                outs = []
                for row in best.tolist():
                    o, prev = [], None
                    for t in row:
                        if t != prev and t != blank and t > IMG:
                            o.append(VOCAB[t])
                        prev = t
                    outs.append("".join(o))
                point["ctc_loss"] = float(np.mean(ctcs[-50:])) if ctcs else None
                point["ctc_cer"] = round(cer(eval_texts, outs), 4)
            curve.append(point)
            print(json.dumps(point), f"| {eval_texts[0]!r} -> {hyp[0]!r}", flush=True)
            next_eval += args.eval_seconds
            if elapsed >= args.minutes * 60:
                break
        s0 = time.time()
        pix, texts = batch(rng, args.batch, font_files)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1.0, (step + 1) / 100)
        loss = forward(args.arch, model, n_img, pix, texts)
        if args.ctc:
            tokens = image_tokens(args.arch, model, pix)
            lp = ctc_columns(tokens).log_softmax(-1).transpose(0, 1)
            targets = [torch.tensor([IDX[c] for c in t]) for t in texts]
            ctc = torch.nn.functional.ctc_loss(lp, torch.cat(targets), torch.full((len(texts),), gw * args.up),
                                               torch.tensor([len(t) for t in targets]), blank=blank,
                                               zero_infinity=True)
            ctcs.append(ctc.item())
            loss = loss + args.ctc * ctc
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        step_times.append(time.time() - s0)
        step += 1
    result = {"arch": args.arch, "ctc": args.ctc, "threads": args.threads, "batch": args.batch,
              "minutes": args.minutes, "params": n_params, "bf16_bytes": 2 * n_params, "image_tokens": n_img,
              "steps": step, "seconds_per_step": round(float(np.median(step_times)), 3), "curve": curve,
              "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


if __name__ == "__main__":
    main()
