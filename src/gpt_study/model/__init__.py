"""The model: a decoder-only transformer that takes token ids (and a KV cache) and returns logits.

What lives here: ``gpt`` (the GPT, its blocks, attention and the inspection flag, the one forward
pass every caller runs), ``cache`` (the KV cache decoding feeds it), ``kernels`` (the fused
attention and dropout paths a CPU needs, and the plain attention kept as the oracle and for reading
weights), ``norms`` (RMSNorm with a hand-written backward for CPU training) and ``loss`` (the
study's objective: cross-entropy with class weights on ``<sot>``/``<eot>`` and label smoothing, and
the chunked output layer + loss that training runs; evaluation scores with the same terms). Imports:
only ``config.model``, ``config.fields``, ``config.data`` (the special token ids) and
``runtime.errors`` of the package: the model knows nothing of devices, precision, training, serving
or the CLI.
"""

from gpt_study.model.cache import KVCache
from gpt_study.model.gpt import GPT

__all__ = ["GPT", "KVCache"]
