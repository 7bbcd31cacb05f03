"""Chat-template families at a tiny size (Idefics3, Gemma 3, LightOnOCR, PaddleOCR-VL, Granite-Docling,
DeepSeek-OCR 2, GOT-OCR 2.0, Florence-2): the real architectures, random weights, saved like hub repos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .base import _ALPHABET_LINE


# ------------------------------------------------------------------------------------------ Idefics3
# A second family, trained by the same command through its chat template. Idefics3 (SmolVLM's architecture:
# SigLIP, pixel-shuffle connector, Llama decoder) because its processor needs no torchvision; Qwen2-VL's and
# SmolVLM's processors carry a video processor that does.

IDEFICS3_BOS, IDEFICS3_EOU, IDEFICS3_PAD = "<|begin_of_text|>", "<end_of_utterance>", "<|finetune_right_pad_id|>"
IDEFICS3_SPECIALS = [IDEFICS3_BOS, "<|end_of_text|>", IDEFICS3_PAD, IDEFICS3_EOU, "<fake_token_around_image>",
                     "<image>", "<global-img>", *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
# HuggingFaceM4/Idefics3-8B-Llama3's template, which also accepts plain-string content.
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class TinyIdefics3Config:
    crop_size: int = 128  # side of each image crop the vision encoder sees
    patch_size: int = 16
    scale_factor: int = 2  # pixel shuffle: (crop / patch)^2 / scale^2 tokens per crop
    longest_edge: int = 256  # the page is resized to this, then cut into crops (+ one global crop)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    bpe_vocab: int = 2048
    seed: int = 0


def create_tiny_idefics3(out: str | Path, cfg: TinyIdefics3Config | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Idefics3ForConditionalGeneration`` with its tokenizer, chat template and processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, PreTrainedTokenizerFast)

    cfg = cfg or TinyIdefics3Config()
    if corpus is None:
        from ..synth import text_corpus

        corpus = text_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*corpus, *[_ALPHABET_LINE] * 20, "User: Assistant:"], trainers.BpeTrainer(
        vocab_size=cfg.bpe_vocab, special_tokens=IDEFICS3_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # no post-processor: the chat template writes the bos token itself
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=IDEFICS3_BOS, eos_token=IDEFICS3_EOU,
                                  pad_token=IDEFICS3_PAD, unk_token=None, padding_side="right",
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    image_processor = Idefics3ImageProcessorPil(do_resize=True, size={"longest_edge": cfg.longest_edge},
                                                do_image_splitting=True,
                                                max_image_size={"longest_edge": cfg.crop_size})
    seq = (cfg.crop_size // cfg.patch_size) ** 2 // cfg.scale_factor**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads // 2,
                max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    vision = dict(hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.crop_size, patch_size=cfg.patch_size)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=cfg.scale_factor,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
                            tie_word_embeddings=False)
    torch.manual_seed(cfg.seed)
    model = Idefics3ForConditionalGeneration(config)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    from ..common import staged_dir

    out = Path(out)
    with staged_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


# ------------------------------------------------------------------------------------------ more chat families
# Tiny random models of the document-OCR families that the installed transformers builds natively and whose
# processor needs no torchvision (docs/fine-tuning.md has the table, and why Qwen2.5-VL, Qwen3-VL, SmolVLM and
# GLM-OCR are not among them). Each is the real architecture at a few dozen hidden units with a byte-level BPE
# trained here and the family's chat format; all go through the same chat path (training_batch,
# generation_inputs) as Idefics3.


@dataclass
class TinyChatConfig:
    image_size: int = 64  # side (or longest edge) of the page the vision tower sees
    patch_size: int = 16  # pixels per image token side, after any merge or pooling
    hidden: int = 64  # decoder width; the vision tower is half as wide
    layers: int = 2
    heads: int = 2
    bpe_vocab: int = 600
    seed: int = 0


def _chat_tokenizer(specials: list[str], template: str, corpus: list[str] | None, vocab: int, **tokens):
    """A byte-level BPE trained on synthetic invoice text, with a family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        from ..synth import text_corpus

        corpus = text_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*corpus, *[_ALPHABET_LINE] * 20, "User: user Assistant: assistant model"],
                            trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="right", chat_template=template, **tokens)


def _save_chat_model(out: str | Path, model, processor) -> Path:
    from ..common import staged_dir

    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):  # generation stops at the end-of-turn token
        setattr(model.generation_config, key, getattr(processor.tokenizer, key))
    out = Path(out)
    with staged_dir(out) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
    return out


# google/gemma-3-*'s turn format (without its system-prompt handling): the processor expands <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' "
    "else message['role'] }}\n{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == "
    "'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def create_tiny_gemma3(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Gemma3ForConditionalGeneration`` (SigLIP, average-pooled image tokens, Gemma 3 decoder)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    cfg = cfg or TinyChatConfig()
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tok = _chat_tokenizer(specials, GEMMA3_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token="<bos>",
                          eos_token="<end_of_turn>", pad_token="<pad>",
                          extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                "image_token": "<image_soft_token>"})
    vit_patch = cfg.patch_size // 2  # the tower's patches; Gemma 3 pools them 2x2 here (4x4 at 896 px)
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": cfg.image_size,
                                                                              "width": cfg.image_size}),
                                tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=tokens)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                head_dim=cfg.hidden // cfg.heads, max_position_embeddings=1024, sliding_window=64,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=vit_patch,
                  vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers starts the projector at zero (a trained checkpoint replaces it): from scratch, no gradient would
    # reach the vision tower
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight,
                          std=config.text_config.hidden_size ** -0.5)
    return _save_chat_model(out, model, processor)


def _chatml_template(image: str) -> str:
    """Qwen's ChatML turns, with the family's image placeholder (the processor expands it)."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
            + image + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def create_tiny_lighton_ocr(out: str | Path, cfg: TinyChatConfig | None = None,
                            corpus: list[str] | None = None) -> Path:
    """A random tiny ``LightOnOcrForConditionalGeneration`` (Pixtral tower at native resolution, 2x2 patch merge,
    Qwen3 decoder, ChatML)."""
    from transformers import (LightOnOcrConfig, LightOnOcrForConditionalGeneration, LightOnOcrProcessor,
                              PixtralImageProcessorPil)

    cfg = cfg or TinyChatConfig()
    template = _chatml_template("<|image_pad|>")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_pad|>", "<|vision_end|>"]
    tok = _chat_tokenizer(specials, template, corpus, cfg.bpe_vocab, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image_pad|>", "image_break_token": "<|vision_pad|>",
                                                "image_end_token": "<|vision_end|>"})
    merge = 2
    patch = cfg.patch_size // merge
    # the page keeps its aspect ratio (longest edge image_size), cut to whole merged patches
    ip = PixtralImageProcessorPil(size={"longest_edge": cfg.image_size},
                                  patch_size={"height": cfg.patch_size, "width": cfg.patch_size})
    processor = LightOnOcrProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, spatial_merge_size=merge,
                                    chat_template=template)
    vision = dict(model_type="pixtral", hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, head_dim=cfg.hidden // 2 // cfg.heads,
                  image_size=cfg.image_size, patch_size=patch)
    text = dict(model_type="qwen3", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                head_dim=cfg.hidden // cfg.heads, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    config = LightOnOcrConfig(vision_config=vision, text_config=text, spatial_merge_size=merge,
                              image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, LightOnOcrForConditionalGeneration(config), processor)


# PaddleOCR-VL's (ERNIE 4.5) turns: "User: <image>prompt\nAssistant:\nanswer</s>".
PADDLEOCR_VL_CHAT_TEMPLATE = (
    "<s>{% for message in messages %}{% if message['role'] == 'user' %}User: {% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '\\n' }}{% else %}Assistant:\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "</s>{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:\n{% endif %}")


def create_tiny_paddleocr_vl(out: str | Path, cfg: TinyChatConfig | None = None,
                             corpus: list[str] | None = None) -> Path:
    """A random tiny ``PaddleOCRVLForConditionalGeneration`` (NaViT-style SigLIP at native resolution, 2x2 merge,
    ERNIE 4.5 decoder with 3-D rotary positions)."""
    from transformers import (PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration, PaddleOCRVLImageProcessorPil,
                              PaddleOCRVLProcessor)

    cfg = cfg or TinyChatConfig()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|IMAGE_START|>", "<|IMAGE_PLACEHOLDER|>", "<|IMAGE_END|>",
                "<|video_pad|>"]
    tok = _chat_tokenizer(specials, PADDLEOCR_VL_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<|IMAGE_PLACEHOLDER|>"})
    merge = 2
    patch = cfg.patch_size // merge
    ip = PaddleOCRVLImageProcessorPil(size={"shortest_edge": (cfg.image_size // 2) ** 2,
                                            "longest_edge": cfg.image_size ** 2},  # in pixels, as the real one
                                      patch_size=patch, merge_size=merge, temporal_patch_size=1)
    processor = PaddleOCRVLProcessor(image_processor=ip, tokenizer=tok, chat_template=PADDLEOCR_VL_CHAT_TEMPLATE)
    head = cfg.hidden // cfg.heads
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=patch,
                  spatial_merge_size=merge)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1, head_dim=head,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                # the rotary frequencies split over (time, height, width) positions, as 16/24/24 of 64 in the real one
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0,
                                 "mrope_section": [head // 8, 3 * head // 16, 3 * head // 16]})
    config = PaddleOCRVLConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                               vision_start_token_id=tok.convert_tokens_to_ids("<|IMAGE_START|>"),
                               vision_end_token_id=tok.convert_tokens_to_ids("<|IMAGE_END|>"))
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, PaddleOCRVLForConditionalGeneration(config), processor)


def create_tiny_granite_docling(out: str | Path, cfg: TinyChatConfig | None = None,
                                corpus: list[str] | None = None) -> Path:
    """A random tiny ``GraniteDoclingForConditionalGeneration`` (granite-for-docling's architecture: SigLIP tiles
    with a deep-stack pixel-shuffle connector, Granite decoder; Idefics3's tile markup and turns). Not the
    258M granite-docling, which is an Idefics3."""
    from transformers import (GraniteDoclingConfig, GraniteDoclingForConditionalGeneration,
                              GraniteDoclingImageProcessorPil, GraniteDoclingProcessor)

    cfg = cfg or TinyChatConfig()
    tok = _chat_tokenizer(IDEFICS3_SPECIALS, IDEFICS3_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token=IDEFICS3_BOS,
                          eos_token=IDEFICS3_EOU, pad_token=IDEFICS3_PAD,
                          extra_special_tokens={"image_token": "<image>"})
    tile, scale = cfg.image_size // 2, 2  # up to 4 tiles of the page (plus a thumbnail); pixel shuffle 2x2
    vit_patch = cfg.patch_size // scale
    ip = GraniteDoclingImageProcessorPil(size={"height": tile, "width": tile}, max_patches=4)
    processor = GraniteDoclingProcessor(image_processor=ip, tokenizer=tok, image_seq_len=(tile // cfg.patch_size) ** 2,
                                        chat_template=IDEFICS3_CHAT_TEMPLATE)
    vision = dict(hidden_size=cfg.hidden // 2, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, image_size=tile, patch_size=vit_patch, out_hidden_size=cfg.hidden,
                  scale_factor=scale, deepstack_visual_indexes=[0], use_fine_route=False)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    config = GraniteDoclingConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, GraniteDoclingForConditionalGeneration(config), processor)


# DeepSeek's User/Assistant turns; the processor expands <image> into the global view's and the tiles' queries.
DEEPSEEK_OCR2_CHAT_TEMPLATE = (
    "<｜begin▁of▁sentence｜>{% for message in messages %}{% if message['role'] == 'user' %}<|User|>"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% else %}<|Assistant|>{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|>{% endif %}")


def create_tiny_deepseek_ocr2(out: str | Path, cfg: TinyChatConfig | None = None,
                              corpus: list[str] | None = None) -> Path:
    """A random tiny ``DeepseekOcr2ForConditionalGeneration`` (SAM ViT, a Qwen2-style encoder reading the image
    through learned queries, a DeepSeek MoE decoder). Its query counts are fixed by the architecture (16x16 for the
    global view, 12x12 per tile), so the tiny one keeps them and shrinks the patches instead: a 128 px page at
    2 px patches (4096 SAM tokens: the slowest of the tiny families)."""
    from transformers import (DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration,
                              DeepseekOcr2ImageProcessorPil, DeepseekOcr2Processor)

    cfg = cfg or TinyChatConfig()
    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>", "<|Assistant|>",
                "<image>"]
    tok = _chat_tokenizer(specials, DEEPSEEK_OCR2_CHAT_TEMPLATE, corpus, cfg.bpe_vocab, bos_token=specials[0],
                          eos_token=specials[1], pad_token=specials[2],
                          extra_special_tokens={"image_token": "<image>"})
    patch, down = 2, 4  # SAM patch; its neck's two stride-2 convolutions
    ip = DeepseekOcr2ImageProcessorPil(size={"height": 16 * patch * down, "width": 16 * patch * down},
                                       tile_size=12 * patch * down, min_patches=1, max_patches=2)
    processor = DeepseekOcr2Processor(image_processor=ip, tokenizer=tok, chat_template=DEEPSEEK_OCR2_CHAT_TEMPLATE,
                                      patch_size=patch, downsample_ratio=down)
    enc = cfg.hidden // 2
    sam = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
               image_size=16 * patch * down, patch_size=patch, window_size=8, global_attn_indexes=[1],
               downsample_channels=[16, enc])
    encoder = dict(vocab_size=len(tok), hidden_size=enc, intermediate_size=cfg.hidden, num_hidden_layers=cfg.layers,
                   num_attention_heads=cfg.heads, num_key_value_heads=1, max_position_embeddings=2048)
    text = dict(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                max_position_embeddings=2048, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                moe_intermediate_size=cfg.hidden, mlp_layer_types=["dense"] + ["sparse"] * (cfg.layers - 1),
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = DeepseekOcr2Config(vision_config=dict(sam_config=sam, encoder_config=encoder), text_config=text,
                                image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, DeepseekOcr2ForConditionalGeneration(config), processor)


# GOT-OCR 2.0's checkpoint ships no chat template (its processor writes the prompt by hand); this is that prompt as
# a template, the user's text in place of its "OCR: " query. _chat_template uses it for GotOcr2Processor.
GOT_OCR2_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail.<|im_end|>"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<img><imgpad></img>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def create_tiny_got_ocr2(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``GotOcr2ForConditionalGeneration`` (SAM ViT, two stride-2 convolutions, Qwen2 decoder). Its
    processor always writes 256 image tokens, so the tiny one keeps them: a 128 px page at 2 px patches. Like the
    real checkpoint it has no chat template of its own (GOT_OCR2_CHAT_TEMPLATE stands in)."""
    from transformers import (GotOcr2Config, GotOcr2ForConditionalGeneration, GotOcr2ImageProcessorPil,
                              GotOcr2Processor)

    cfg = cfg or TinyChatConfig()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]
    tok = _chat_tokenizer(specials, None, corpus, cfg.bpe_vocab, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    patch = 2
    size = 64 * patch  # (64 / 4)^2 = 256 image tokens after the convolutions, as the processor writes
    processor = GotOcr2Processor(image_processor=GotOcr2ImageProcessorPil(size={"height": size, "width": size}),
                                 tokenizer=tok)
    vision = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=size,
                  patch_size=patch, window_size=8, global_attn_indexes=[1], mlp_dim=32)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=1,
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=None, tie_word_embeddings=True)
    config = GotOcr2Config(vision_config=vision, text_config=text, image_seq_length=256,
                           image_token_index=tok.convert_tokens_to_ids("<imgpad>"))
    torch.manual_seed(cfg.seed)
    return _save_chat_model(out, GotOcr2ForConditionalGeneration(config), processor)


def create_tiny_florence2(out: str | Path, cfg: TinyChatConfig | None = None, corpus: list[str] | None = None) -> Path:
    """A random tiny ``Florence2ForConditionalGeneration``: DaViT tower, BART encoder-decoder. The image and the
    prompt go to the encoder, the answer comes from the decoder (training_batch's seq2seq path)."""
    from transformers import (CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    cfg = cfg or TinyChatConfig()
    tok = _chat_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], None, corpus, cfg.bpe_vocab, bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_special_tokens={"image_token": "<image>"})
    size = 2 * cfg.image_size  # DaViT's four stages divide by 32: a 4x4 grid, + 1 pooled token
    ip = CLIPImageProcessorPil(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                               do_center_crop=False)
    ip.image_seq_length = (size // 32) ** 2 + 1
    processor = Florence2Processor(image_processor=ip, tokenizer=tok)
    h = cfg.hidden
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 1, 2, 2], num_groups=[1, 1, 2, 2],
                  window_size=2, projection_dim=h, max_position_embeddings=16, drop_path_rate=0.0)
    # BART's convention, as Florence-2's: the decoder starts from </s>, answers are "<s>answer</s>"
    text = dict(model_type="bart", vocab_size=len(tok), d_model=h, encoder_layers=cfg.layers,
                decoder_layers=cfg.layers, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
                encoder_ffn_dim=2 * h, decoder_ffn_dim=2 * h, max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tok.image_token_id)
    torch.manual_seed(cfg.seed)
    model = Florence2ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = tok.eos_token_id
    return _save_chat_model(out, model, processor)


# family -> builder of its tiny random model; `tiny-random-<family>` as a model name builds one (resolve_model)
TINY_CHAT_FAMILIES = {"gemma3": create_tiny_gemma3, "lighton_ocr": create_tiny_lighton_ocr,
                      "paddleocr_vl": create_tiny_paddleocr_vl, "granite_docling": create_tiny_granite_docling,
                      "deepseek_ocr2": create_tiny_deepseek_ocr2, "got_ocr2": create_tiny_got_ocr2,
                      "florence2": create_tiny_florence2}
