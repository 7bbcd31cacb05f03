"""Benchmarks, each a baseline and its candidate measured in one run and reported as ratios (``invoice-vlm bench
...``): ``synth`` (the generator's workers), ``train`` and ``collate`` (a training step, the collator), ``eval``
(scoring), ``predict`` (the engine against one ``generate`` per page and Tesseract), ``segment`` (segmenters against
PDF text layers) and ``reader`` (the row reader given the text layer's rows, in ``segment``). They sit above every
stage they measure: only the CLI calls them."""
