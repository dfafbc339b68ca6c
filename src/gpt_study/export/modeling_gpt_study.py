"""What gpt-study's models can have that no stock transformers class computes.

- ``GPTStudyForCausalLM``: GPT-2 with a bias on its output layer (the study's model has one;
  zeros where a model has none), RMSNorms where ``norm_type`` is ``"rms_norm"`` and a gated
  feed-forward where ``gated_mlp`` is true (``act(gate) * value``: SwiGLU with ``"silu"``).
- ``GPTStudyLlamaForCausalLM``: Llama with LayerNorms where ``norm_type`` is ``"layer_norm"``, a
  plain feed-forward where ``gated_mlp`` is false (``down_proj(act(up_proj(x)))``, ``act`` the
  ``hidden_act``) and a bias on its output layer where ``lm_head_bias`` is true.
- Both: the listed layers adding a token table of their own to their attention values
  (``--value_embeds``: ``v = v_proj(h) + value_embed[token]``); each head's queries and keys
  RMS-normalised where ``qk_norm`` is true (Qwen3's ``q_norm``, ``k_norm``); logits soft-capped
  where ``final_logit_softcapping`` is above 0 (``--logit_softcap``: ``cap * tanh(logits /
  cap)``, Gemma 2's name for it), in ``lm_head`` so that the loss and generation read the
  capped logits; and with ``residual_scalars`` (``--residual_scalars``) layer i reads
  ``resid_scale[i] * h + x0_scale[i] * x0``, x0 being the embeddings. The norms swapped in are
  torch's own ``nn.LayerNorm`` and ``nn.RMSNorm``.

gpt-study's ``export`` copies this file into the exported folder; its ``config.json`` names the
classes in ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` loads them. Everything else (attention, cache, generation) is
``GPT2LMHeadModel``'s and ``LlamaForCausalLM``'s own code.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D


class CappedLMHead(nn.Linear):
    """``lm_head`` whose logits are ``cap * tanh(logits / cap)``; ``cap`` 0: the plain layer.
    This file travels alone, so gpt-study's ``softcap`` is written here again (the export's
    tests hold the two to the same logits)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, cap: float) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.cap = cap

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden)
        return self.cap * torch.tanh(logits / self.cap) if self.cap else logits


class ResidualScalars(nn.Module):
    """``resid_scale`` and ``x0_scale``, one of each per layer: hooks keep the embeddings (x0)
    of the tokens in this call and mix them into each layer's input, so the stock model's
    forward, cache and ``generate`` run unchanged."""

    def __init__(self, embeddings: nn.Module, layers: nn.ModuleList) -> None:
        super().__init__()
        self.resid_scale = nn.Parameter(torch.ones(len(layers)))
        self.x0_scale = nn.Parameter(torch.zeros(len(layers)))
        self.x0: torch.Tensor | None = None
        embeddings.register_forward_hook(self._keep)
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._mixer(i))

    def _keep(self, _module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        self.x0 = out

    def _mixer(self, i: int):
        def mix(_module: nn.Module, args: tuple) -> tuple:
            hidden = self.resid_scale[i] * args[0] + self.x0_scale[i] * self.x0
            return (hidden, *args[1:])

        return mix


class ValueRows:
    """A projection with a token table of values of its own (``--value_embeds``, as
    ``value_embed``): its rows for the tokens in ``ids``, which the model sets before each
    forward (the new tokens only)."""

    def _add_table(self, vocab_size: int, width: int) -> None:
        self.value_embed = nn.Embedding(vocab_size, width)
        self.ids: torch.Tensor | None = None  # (B, T)

    def rows(self, dtype: torch.dtype) -> torch.Tensor:
        if self.ids is None:
            raise ValueError("value embeddings need input_ids (inputs_embeds has no tokens)")
        return self.value_embed(self.ids).to(dtype)  # (B, T, width)


class ValueEmbedQKV(ValueRows, Conv1D):
    """GPT-2's ``c_attn`` ([q; k; v] from one product) with the table's rows added to v."""

    def __init__(self, nf: int, nx: int, vocab_size: int) -> None:
        super().__init__(nf, nx)
        self._add_table(vocab_size, nx)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        ve = self.rows(hidden.dtype)  # (B, T, C), padded to sit after q and k
        return super().forward(hidden) + F.pad(ve, (self.nf - ve.size(-1), 0))


class ValueEmbedProjection(ValueRows, nn.Linear):
    """Llama's ``v_proj`` with the table's rows added to its output."""

    def __init__(self, in_features: int, out_features: int, bias: bool, vocab_size: int) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._add_table(vocab_size, out_features)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden) + self.rows(hidden.dtype)


class Gated(nn.Module):
    """A gated unit after a projection that makes [gate; value]: ``act(gate) * value`` (SwiGLU
    with SiLU; Shazeer 2020)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, value = hidden.chunk(2, dim=-1)  # (B, T, 2 d_ff) -> 2 x (B, T, d_ff)
        return self.act(gate) * value


class PlainMLP(nn.Module):
    """Llama's feed-forward without its gate: ``down_proj(act_fn(up_proj(x)))``."""

    def __init__(self, width: int, inner: int, bias: bool, act: nn.Module) -> None:
        super().__init__()
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)
        self.act_fn = act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden)))


def _norm_heads(proj: nn.Module, norms: tuple, head_dim: int) -> None:
    """``qk_norm`` (Qwen3's ``q_norm`` and ``k_norm``): a hook on ``proj`` RMS-normalises each
    head of each part of its output ([q], [k], or GPT-2's [q; k; v]) with that part's norm (None:
    the part as it is), before the stock attention reads them."""

    def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        parts = out.chunk(len(norms), dim=-1)  # (B, T, H * hd) each
        done = [
            part if norm is None else norm(part.unflatten(-1, (-1, head_dim))).flatten(-2)
            for part, norm in zip(parts, norms, strict=True)
        ]  # (B, T, H, hd) normalised, back to (B, T, H * hd)
        return torch.cat(done, dim=-1)

    proj.register_forward_hook(hook)


def _add_head_norms(attn: nn.Module, head_dim: int, eps: float) -> None:
    attn.q_norm = nn.RMSNorm(head_dim, eps=eps)
    attn.k_norm = nn.RMSNorm(head_dim, eps=eps)


NORMS = {"layer_norm": nn.LayerNorm, "rms_norm": nn.RMSNorm}  # torch's, by norm_type


def _swap_norms(module: nn.Module, norm_type: str, eps: float) -> None:
    """Every LayerNorm or RMSNorm under ``module`` replaced by torch's ``norm_type`` of the same
    width and ``eps`` (a LayerNorm with its bias)."""
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm | nn.RMSNorm) or type(child).__name__.endswith("RMSNorm"):
            setattr(module, name, NORMS[norm_type](child.weight.numel(), eps=eps))
        else:
            _swap_norms(child, norm_type, eps)


# Our options in both configs, with the values that compute what the stock class does (None: the
# stock class's norm and feed-forward).
OUR_OPTIONS = {
    "value_embed_layers": None,
    "final_logit_softcapping": 0.0,
    "residual_scalars": False,
    "norm_type": None,
    "gated_mlp": None,
    "qk_norm": False,
}


def _take_our_options(config, kwargs: dict) -> None:
    for name, default in OUR_OPTIONS.items():
        setattr(config, name, kwargs.pop(name, default))
    config.value_embed_layers = list(config.value_embed_layers or []) or None


class GPTStudyConfig(GPT2Config):
    """GPT-2's configuration under its own model type, so the auto classes find ours, plus
    :data:`OUR_OPTIONS`."""

    model_type = "gpt_study"

    def __init__(self, **kwargs) -> None:
        _take_our_options(self, kwargs)
        super().__init__(**kwargs)


class GPTStudyLlamaConfig(LlamaConfig):
    """Llama's configuration plus :data:`OUR_OPTIONS` and ``lm_head_bias`` (our GPT-2 class's
    head always has one)."""

    model_type = "gpt_study_llama"

    def __init__(self, **kwargs) -> None:
        _take_our_options(self, kwargs)
        self.lm_head_bias = kwargs.pop("lm_head_bias", False)
        super().__init__(**kwargs)


class OurParts:
    """What both classes of ours add to their stock class, and how their forward feeds it."""

    stock_norm = ""  # the norm_type of the stock class

    def _take_norms(self, eps: float) -> None:
        """The norms the config names, first (before the heads' own norms join)."""
        if self.config.norm_type not in (None, self.stock_norm):
            _swap_norms(self, self.config.norm_type, eps)

    def _add_our_parts(self, head_in: int, head_bias: bool, embeddings, layers) -> None:
        """The capped head, and the residual scalars where the config has them (``embeddings``:
        the module whose output is x0)."""
        config = self.config
        cap = config.final_logit_softcapping
        self.lm_head = CappedLMHead(head_in, config.vocab_size, head_bias, cap)
        if config.residual_scalars:
            self.scalars = ResidualScalars(embeddings, layers)
        # found once here (the tables are in place), not at every forward of a decoding loop
        self.value_rows = [m for m in self.modules() if isinstance(m, ValueRows)]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ):
        # position_ids named here, as the stock forward names it: generate() derives them from
        # a left-padded batch's attention_mask only for a forward whose signature has them
        for module in self.value_rows:
            module.ids = input_ids  # the new tokens only
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


class GPTStudyForCausalLM(OurParts, GPT2LMHeadModel):
    """``GPT2LMHeadModel`` whose ``lm_head`` has a bias, as gpt-study's ``head`` has, with
    :class:`OurParts` and a gated feed-forward where ``gated_mlp`` is true; x0 is the token and
    position embeddings after their dropout."""

    config_class = GPTStudyConfig
    stock_norm = "layer_norm"

    def __init__(self, config: GPTStudyConfig) -> None:
        super().__init__(config)
        self._take_norms(config.layer_norm_epsilon)
        for i in config.value_embed_layers or []:
            attn = self.transformer.h[i].attn
            attn.c_attn = ValueEmbedQKV(attn.c_attn.nf, attn.c_attn.nx, config.vocab_size)
        for block in self.transformer.h if config.gated_mlp is True else []:
            mlp = block.mlp  # c_fc makes [gate; value]
            mlp.c_fc = Conv1D(2 * mlp.c_fc.nf, mlp.c_fc.nx)
            mlp.act = Gated(mlp.act)  # the activation_function's
        for block in self.transformer.h if config.qk_norm else []:
            attn = block.attn
            _add_head_norms(attn, attn.head_dim, config.layer_norm_epsilon)
            _norm_heads(attn.c_attn, (attn.q_norm, attn.k_norm, None), attn.head_dim)
        self._add_our_parts(config.n_embd, True, self.transformer.drop, self.transformer.h)
        self.post_init()


class GPTStudyLlamaForCausalLM(OurParts, LlamaForCausalLM):
    """``LlamaForCausalLM`` with :class:`OurParts`; x0 is the token embeddings."""

    config_class = GPTStudyLlamaConfig
    stock_norm = "rms_norm"

    def __init__(self, config: GPTStudyLlamaConfig) -> None:
        super().__init__(config)
        self._take_norms(config.rms_norm_eps)
        for i in config.value_embed_layers or []:
            attn = self.model.layers[i].self_attn
            old = attn.v_proj
            attn.v_proj = ValueEmbedProjection(
                old.in_features, old.out_features, old.bias is not None, config.vocab_size
            )
        for layer in self.model.layers if config.gated_mlp is False else []:
            sizes = (config.hidden_size, config.intermediate_size, config.mlp_bias)
            layer.mlp = PlainMLP(*sizes, layer.mlp.act_fn)  # the hidden_act's, with no gate
        for layer in self.model.layers if config.qk_norm else []:
            attn = layer.self_attn
            _add_head_norms(attn, attn.head_dim, config.rms_norm_eps)
            _norm_heads(attn.q_proj, (attn.q_norm,), attn.head_dim)
            _norm_heads(attn.k_proj, (attn.k_norm,), attn.head_dim)
        head = (config.hidden_size, config.lm_head_bias)
        self._add_our_parts(*head, self.model.embed_tokens, self.model.layers)
        self.post_init()
