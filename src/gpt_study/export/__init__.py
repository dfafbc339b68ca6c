"""Taking a model elsewhere: a checkpoint as a folder that transformers loads.

``gpt-study export --checkpoint CK --format hf --out DIR`` writes weights (safetensors),
``config.json``, ``generation_config.json`` and the tokenizer so that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load it,
and checks, before anything replaces ``DIR``, that transformers computes the same logits (max abs
difference under 1e-4 in fp32) and the same greedy tokens as gpt-study.

``gpt-study import --hf NAME_OR_FOLDER --out CHECKPOINT`` is the way back
(:func:`~gpt_study.export.imports.import_hf`): a transformers GPT-2, Llama, Qwen3 or GPT-NeoX
becomes a checkpoint, through the same tables, checked the same way before it is written.

The modules, in import order:

- :mod:`.layouts`: what a layout is (the options it implies, its ``config.json`` entries, the
  name of every weight) and the functions that read one both ways.
- :mod:`.tables`: the layouts themselves, one table per transformers architecture.
- :mod:`.hf`: the export direction (which layout a model fits, ``config.json``, the weights) and
  ``generation_config.json``.
- :mod:`.tokenizer`: the tokenizer as a ``tokenizers`` JSON (``bpe`` exact; ``word`` the nearest
  pipeline, with the share of stories it tokenizes exactly as spaCy does).
- :mod:`.verify`: the checks with transformers (an optional extra, imported only there) and the
  held-out stories the word pipeline is measured on.
- :mod:`.readme`, :mod:`.folder`: the folder's README and :func:`export_hf`, which builds, checks
  and publishes the folder.
- :mod:`.imports`: :func:`~gpt_study.export.imports.import_hf` (imported only by its command:
  it needs transformers).

``modeling_gpt_study.py`` is not imported here: it holds the classes copied into folders whose
model no stock class computes (a GPT-2 head bias, Llama's value embeddings; see :mod:`.remote`).
"""

from gpt_study.export.folder import FILES, ExportResult, export_hf

__all__ = ["FILES", "ExportResult", "export_hf"]
