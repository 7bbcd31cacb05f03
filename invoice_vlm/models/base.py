"""What every model kind shares: the names of the built-in models, loading a checkpoint (a folder or a hub id)
the way a hub one loads, and the checks a folder passes first."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import InvoiceVLMError

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
# Built fresh (random weights) by `train` when its config names it, instead of a folder or hub id.
TINY_RANDOM = "tiny-random"
# The embedded default: invoice-vlm-tiny, pretrained by this project (configs/tiny/pretrain.yaml) and shipped in the
# repository. `demo`, `predict`, `serve` and `train` use it unless told otherwise.
EMBEDDED = "invoice-vlm-tiny"
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "models" / EMBEDDED
TINY_RANDOM_2 = "tiny-random-paligemma2"
TINY_RANDOM_IDEFICS3 = "tiny-random-idefics3"
TINY_RANDOM_ROWS = "tiny-random-rows"  # a fresh row reader of invoice-vlm-tiny's architecture

# Every character our locales print, so they are merged into tokens even if the sampled corpus misses some.
_ALPHABET_LINE = ("€ £ $ ¥ ₹ CHF % ° № º ª ß ä ö ü Ä Ö Ü é è ê ë à â ç î ï ô û ù ÿ œ æ É È Ê À Ç Ô Œ ñ á í ó ú "
                  "Ñ Á Í Ó Ú ì ò Ì Ò ø å Ø Å ĳ – — · • « » „ “ ” ‘ ’ @ # & * / \\ ( ) [ ] + - = : ; , . ! ? _ |")


def embedded_model() -> Path:
    if not (EMBEDDED_DIR / "config.json").is_file():
        raise InvoiceVLMError(f"{EMBEDDED}: the embedded model is missing ({EMBEDDED_DIR}); this needs a source "
                              "checkout of invoice-vlm, or give a model folder or hub id")
    return EMBEDDED_DIR


def load(name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | None = None,
         trust_remote_code: bool = False, quantization_config=None):
    """Load (model, processor) from a folder or a hub id. Safetensors only; remote code only when asked."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = str(embedded_model()) if str(name_or_path) == EMBEDDED else str(name_or_path)
    p = Path(name)
    if p.exists() and not (p / "config.json").is_file():
        raise InvoiceVLMError(f"{p}: no model here (config.json missing)")
    if not p.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise InvoiceVLMError(f"{name}: model folder not found (and not a hub id of the form owner/name)")
    if p.is_dir():
        check_model_folder(p, trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        extra = {"quantization_config": quantization_config, "device_map": {"": 0}} if quantization_config else {}
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype or torch.float32,
                                                            use_safetensors=True,
                                                            trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:  # missing files, no safetensors, offline hub, unreadable config
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InvoiceVLMError(f"{name}: cannot load model ({first})") from None
    if device:
        model.to(device)
    model.eval()
    return model, processor


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
              "processor_config.json", "generation_config.json", "special_tokens_map.json")


def check_model_folder(folder: Path, trust_remote_code: bool = False) -> None:
    """What a model folder must be before transformers sees it, each problem one line naming the file: weights in
    safetensors (a pickle file can run code when loaded, so it is never loaded), JSON files that parse, and no
    code of its own unless the user asked for it."""
    import json

    parsed = {}
    for name in JSON_FILES:
        f = folder / name
        if f.is_file():
            try:
                parsed[name] = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvoiceVLMError(f"{f}: not valid JSON ({e}); the model's {name} is damaged") from None
    if not any(folder.glob("*.safetensors")) and not (folder / "adapter_config.json").is_file():
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InvoiceVLMError(f"{folder}: only pickle weights here ({', '.join(pickles[:3])}); refused, "
                                  "safetensors only: a pickle file can run code when it is loaded. Convert it "
                                  "where you trust it (model.save_pretrained(..., safe_serialization=True))")
    config = parsed.get("config.json", {})
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise InvoiceVLMError(f"{folder / 'config.json'}: the model asks to run its own code (remote code, "
                              "auto_map); refused unless you trust it and set trust_remote_code (train: --set "
                              "trust_remote_code=true)")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
