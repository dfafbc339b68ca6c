"""Data stage: corpus sources, the study's cleaning, tokenizers, preparation and datasets."""
