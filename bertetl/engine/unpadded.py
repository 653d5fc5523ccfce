"""The unpadded model path (`EngineConfig.unpadded`): a batch's texts packed end to end.

The model runs once over one row holding every real token of the batch, position ids
restarting at each text, and attention is computed text by text: `varlen_attention`,
registered with transformers' `AttentionInterface`, does it on CUDA by viewing the packed
queries, keys and values as torch nested jagged tensors for SDPA, which runs a varlen flash
or memory-efficient kernel on them (no padded position anywhere); on the CPU, where SDPA
has no such kernel, by padding them for the attention product alone. The Linear layers (most
of the FLOPs) see real tokens only; pooling and the classifier head then read each text's
own tokens (`pool_packed`, `classify_packed`).

BERT models only: their embeddings take position ids as given, and their sequence
classifier is pooler + linear over the [CLS] token, which `classify_packed` reproduces.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from bertetl.engine.model_files import PoolingSpec
from bertetl.errors import ModelError

#: The name `varlen_attention` is registered under in transformers' AttentionInterface.
VARLEN = "bertetl_varlen"
#: Model types whose packed forward is exact here (see the module docstring).
SUPPORTED_MODEL_TYPES = ("bert",)


def varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention within each packed text: (1, heads, tokens, head_dim) queries, keys and
    values, with `cu_seq_lens_q` (text starts plus the total, int64) and `max_length_q` (the
    longest text) in `kwargs`; returns (1, tokens, heads, head_dim), as transformers'
    attention functions do. CUDA: `attend_jagged`; CPU: `attend_repadded`."""
    offsets = kwargs["cu_seq_lens_q"]
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, dim)
    if query.device.type == "cuda":
        out = attend_jagged(q, k, v, offsets, scaling)
    else:
        out = attend_repadded(q, k, v, offsets, int(kwargs["max_length_q"]), scaling)
    return out.unsqueeze(0), None


def attend_jagged(q: Any, k: Any, v: Any, offsets: Any, scaling: float | None) -> Any:
    """Packed (tokens, heads, dim) attention as nested jagged tensors through SDPA, which
    picks a varlen flash or memory-efficient kernel on CUDA (on the CPU it falls back to a
    slow per-text path, hence `attend_repadded` there)."""
    import torch

    def jagged(x: Any) -> Any:  # (texts, heads, j, dim)
        return torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        jagged(q), jagged(k), jagged(v), scale=scaling
    )
    return out.transpose(1, 2).values()


def attend_repadded(
    q: Any, k: Any, v: Any, offsets: Any, longest: int, scaling: float | None
) -> Any:
    """Packed (tokens, heads, dim) attention on the CPU: queries, keys and values are
    scattered into a padded (texts, heads, longest, dim) block for one dense SDPA call with
    a key mask, and the real positions gathered back. Only attention sees padding; the
    Linear layers around it, most of the work, still run on real tokens only."""
    import torch

    lengths = offsets.diff()
    texts, (tokens, heads, dim) = len(lengths), q.shape
    row = torch.repeat_interleave(torch.arange(texts, device=q.device), lengths)
    position = torch.arange(tokens, device=q.device) - offsets[:-1][row]
    slot = row * longest + position  # each token's place in the padded block

    def padded(x: Any) -> Any:
        block = x.new_zeros(texts * longest, heads, dim).index_copy_(0, slot, x)
        return block.view(texts, longest, heads, dim).transpose(1, 2)

    keys = torch.arange(longest, device=q.device)[None, :] < lengths[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        padded(q), padded(k), padded(v), attn_mask=keys[:, None, None, :], scale=scaling
    )
    return out.transpose(1, 2).reshape(texts * longest, heads, dim)[slot]


def use_unpadded(model: Any, model_dir: object) -> Any:
    """Switch a loaded model to `varlen_attention` (registered on first use); a model type
    this path is not exact for is a `ModelError` naming it."""
    from transformers import AttentionInterface

    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"--unpadded supports BERT models ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"{model_dir} is a {model_type!r} model: run it without --unpadded"
        )
    _quiet_torch_nested()
    AttentionInterface.register(VARLEN, varlen_attention)
    model.set_attn_implementation(VARLEN)
    return model


def _quiet_torch_nested() -> None:
    """Silence two notices torch gives on every process's first jagged SDPA, about torch's
    own code: the CPU fallback's "nested tensors are in prototype stage" warning, and
    `is_fx_tracing`'s deprecation notice, which `nested_tensor_from_jagged` itself triggers
    (logged once per process: it is spent here with its logger muted)."""
    from torch.fx import _symbolic_trace

    warnings.filterwarnings(
        "ignore", message="The PyTorch API of nested tensors is in prototype", category=UserWarning
    )
    fx_log = logging.getLogger(_symbolic_trace.__name__)
    level = fx_log.level
    fx_log.setLevel(logging.ERROR)
    try:
        _symbolic_trace.is_fx_tracing()
    finally:
        fx_log.setLevel(level)


def packed_forward(
    model: Any, input_ids: Any, position_ids: Any, offsets: Any, longest: int
) -> Any:
    """The model's outputs for one packed row: `input_ids` and `position_ids` are (1,
    tokens), `offsets` (texts + 1,) int64 on the model's device, `longest` the longest text."""
    return model(
        input_ids=input_ids,
        position_ids=position_ids,
        cu_seq_lens_q=offsets,
        cu_seq_lens_k=offsets,
        max_length_q=longest,
        max_length_k=longest,
    )


def pool_packed(hidden: Any, offsets: Any, spec: PoolingSpec) -> Any:
    """Sentence vectors (texts, dim) from packed token vectors (tokens, dim), as `pool` does
    from padded ones."""
    import torch

    hidden = hidden.float()
    lengths = offsets.diff()
    if spec.mode == "cls":
        pooled = hidden[offsets[:-1]]
    elif spec.mode == "max":
        pooled = torch.segment_reduce(hidden, "max", lengths=lengths, axis=0)
    else:
        pooled = torch.segment_reduce(hidden, "sum", lengths=lengths, axis=0)
        counts = lengths.unsqueeze(1).to(hidden.dtype)
        pooled = pooled / (counts if spec.mode == "mean" else torch.sqrt(counts))
    if spec.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


def classify_packed(
    model: Any, input_ids: Any, position_ids: Any, offsets: Any, longest: int
) -> Any:
    """A BERT sequence classifier's logits (texts, labels) for one packed row: the encoder
    over the packed tokens, then its pooler and classifier over each text's [CLS] vector."""
    bert = model.bert
    hidden = packed_forward(bert, input_ids, position_ids, offsets, longest).last_hidden_state[0]
    first = hidden[offsets[:-1]].unsqueeze(1)  # the pooler reads position 0 of each row
    pooled = bert.pooler(first)
    return model.classifier(model.dropout(pooled))
