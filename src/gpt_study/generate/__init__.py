"""Writing stories: sampling as small pure functions, KV-cached decoding with a sliding window.

Pieces, from the inside out, one module each (all re-exported here):

* :mod:`~gpt_study.generate.sampling`: ``apply_repetition_penalty``, ``candidates``,
  ``draw_nucleus``, ``next_token``: one step of decoding on a (B, V) block of logits. Pure
  functions, easy to test on their own.
* :mod:`~gpt_study.generate.decode`: ``generate_ids``, the decoding loop on token ids. A
  :class:`~gpt_study.model.KVCache` holds the keys and values of the positions already seen, so
  each new token costs one position of work instead of the whole sequence again (the study
  re-ran everything for every token). Beside it ``reference_generate``: the study's way (re-run
  the sequence for every token), kept as the test oracle and the benchmark baseline.
* :mod:`~gpt_study.generate.window`: ``segment_start`` and the window and keep sizes, the
  schedule every decoder shares.
* :mod:`~gpt_study.generate.decode_fast`: ``decode_row``, one prompt (greedy or sampled) with no
  per-row bookkeeping, through the model's own forward pass (``generate_ids`` hands such
  prompts to it).
* :mod:`~gpt_study.generate.weights`: ``quantize_int8``, int8 weight-only linear layers (a
  quarter of the bytes each token reads), and ``weight_bytes_per_token``.
* :mod:`~gpt_study.generate.text`: ``generate``, text in, text out: cleans and encodes prompts
  exactly as ``prepare`` did, warns about out-of-vocabulary words, streams readable text as it
  is produced; and the formatters ``readable``, ``raw_tokens``, ``describe``.

**The window.** The model learned positions ``0 .. context_size - 1`` only (the study trained on
128-token rows but generated up to 256, through positions training never saw). Learned absolute
positions mean a full cache cannot just drop its oldest entry: every kept key was computed at a
position that would change. So when the window is full, generation *slides*: it keeps the most
recent ``keep`` tokens (three quarters of the window by default), re-encodes them from position 0
in one batched forward pass, and carries on. Prompts longer than the window keep their most
recent tokens. ``keep = context_size`` gives an exact sliding window at the price of one full
forward pass per token.

**Batches.** Prompts of different lengths share one cache without padding: all rows are
left-aligned at position 0 and advance one position per step; a row still inside its prompt is
fed its next prompt token instead of a sample. Each row therefore sees exactly the tokens (and
positions) it would see alone. Rows that have finished are dropped at the next slide.
"""

from gpt_study.generate.decode import generate_ids, reference_generate
from gpt_study.generate.decode_fast import RowDecoder, decode_row
from gpt_study.generate.sampling import (
    apply_repetition_penalty,
    candidates,
    draw_nucleus,
    next_token,
)
from gpt_study.generate.text import (
    GenerationResult,
    describe,
    encode_prompt,
    generate,
    raw_tokens,
    readable,
)
from gpt_study.generate.weights import quantize_int8, weight_bytes_per_token
from gpt_study.generate.window import SLIDE_KEEP as SLIDE_KEEP
from gpt_study.generate.window import segment_start

__all__ = [
    "GenerationResult",
    "RowDecoder",
    "apply_repetition_penalty",
    "candidates",
    "decode_row",
    "describe",
    "draw_nucleus",
    "encode_prompt",
    "generate",
    "generate_ids",
    "next_token",
    "quantize_int8",
    "raw_tokens",
    "readable",
    "reference_generate",
    "segment_start",
    "weight_bytes_per_token",
]
