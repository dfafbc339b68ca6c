"""The values of the device-dependent choices, once: ``config.runtime``'s fields offer them as
flags' choices and ``runtime.plan`` / ``runtime.device`` check and resolve them."""

from __future__ import annotations

SWITCH = ["auto", "on", "off"]  # a device choice: auto (gpt_study.runtime.plan decides), forced
ATTENTION = ["auto", "sdpa", "cpu_kernels"]
BACKENDS = ["auto", "gloo", "nccl"]
DTYPES = ["auto", "float32", "bfloat16", "float16"]
