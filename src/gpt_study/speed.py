"""Process-wide speed settings of a training step, kept out of the model code.

``benchmarks/bench_train.py`` measures each piece of the fast step against the study's plain
fp32 step; the training loop applies the same ones, so the benchmark measures what users run:
bf16 autocast, :func:`gpt_study.loss.head_loss` (or :class:`gpt_study.loss.LMLoss`) instead of
``lm_loss(model(x), y)``, fused AdamW, and :func:`allow_bf16_attention_math`.
"""

from __future__ import annotations

import torch


def allow_bf16_attention_math(enabled: bool = True) -> None:
    """Let the math path of ``scaled_dot_product_attention`` compute in bf16 under autocast.

    It is the path taken with attention dropout on a CPU (the fused kernels refuse dropout
    there). By default it copies bf16 q, k, v to fp32 and the result back; allowing bf16
    reductions makes attention about 1.4x faster, at the precision of the rest of the bf16 step
    (the softmax still sums in fp32). A process-wide flag: set it where autocast is chosen.
    """
    setter = getattr(torch.backends.cuda, "allow_fp16_bf16_reduction_math_sdp", None)
    if setter is not None:  # despite its namespace, the math path reads it on every device
        setter(enabled)
