"""invoice-vlm: fine-tune, evaluate and serve vision-language models for invoice OCR."""

__version__ = "0.1.0"
