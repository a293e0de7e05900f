"""Language-model building blocks used by train-lm: tokenizer training, presets, data mixtures, the trainer."""
