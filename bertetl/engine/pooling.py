"""Token vectors to one sentence vector, as sentence-transformers' modules after the
Transformer do it: `Pooling` (cls, max, mean, mean_sqrt_len, weightedmean, lasttoken; the
prompt's tokens left out with `include_prompt: false`), `Dense` layers, then `Normalize`.

The modules are read from the model folder's `modules.json` (`read_modules`); their weights are
safetensors, and activations come from a fixed list of torch classes (no import by name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertetl.errors import ModelError

SUPPORTED_POOLING = ("cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken")
#: Dense activations bertetl runs (sentence-transformers saves the class's full name).
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")


@dataclass(frozen=True)
class DenseSpec:
    """One sentence-transformers `Dense` module: its folder and layer shape."""

    path: Path
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "Tanh"
    residual: bool = False


@dataclass(frozen=True)
class PoolingSpec:
    """How token vectors become one sentence vector, as sentence-transformers configures it."""

    mode: str = "mean"
    normalize: bool = False
    include_prompt: bool = True
    #: `Dense` modules after pooling, in order (before `Normalize`).
    dense: tuple[DenseSpec, ...] = field(default=())


def _json(path: Path) -> Any:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); fix or replace it") from e


def pooling_mode(cfg: dict[str, Any], cfg_file: Path) -> str:
    """The one pooling mode a `Pooling` config names (old `pooling_mode_*` flags or the newer
    `pooling_mode`), in bertetl's spelling (`mean_sqrt_len`, `weightedmean`, `lasttoken`)."""
    if "pooling_mode" in cfg:
        given = cfg["pooling_mode"]
        modes = list(given) if isinstance(given, list | tuple) else [given]
    else:
        modes = [
            key.removeprefix("pooling_mode_")
            for key, on in cfg.items()
            if on and key.startswith("pooling_mode_")
        ]
    modes = [str(m).removesuffix("_tokens").removesuffix("_token") for m in modes]
    if len(modes) != 1 or modes[0] not in SUPPORTED_POOLING:
        raise ModelError(
            f"{cfg_file}: pooling {modes or 'none'} is not supported "
            f"(supported: exactly one of {', '.join(SUPPORTED_POOLING)})"
        )
    return modes[0]


def dense_spec(folder: Path) -> DenseSpec:
    """A `Dense` module's config, checked: safetensors weights, a known activation, reading
    and writing the sentence embedding."""
    cfg = _json(folder / "config.json")
    activation = str(cfg.get("activation_function") or "torch.nn.modules.linear.Identity")
    name = activation.rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ModelError(
            f"{folder}/config.json: Dense activation {activation} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding" or cfg.get(
        "module_output_name", "sentence_embedding"
    ) not in (None, "sentence_embedding"):
        raise ModelError(f"{folder}/config.json: a Dense over other features is not supported")
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} has no model.safetensors (Dense weights are loaded from it)")
    try:
        return DenseSpec(
            folder,
            int(cfg["in_features"]),
            int(cfg["out_features"]),
            bool(cfg.get("bias", True)),
            name,
            bool(cfg.get("use_residual", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{folder}/config.json: not a Dense config ({e})") from e


def read_modules(model_dir: Path) -> PoolingSpec:
    """Pooling, Dense and Normalize from `modules.json` (else mean pooling); a module bertetl
    cannot run, or one out of the Transformer, Pooling, Dense..., Normalize order, is a
    `ModelError` naming it."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return PoolingSpec()
    modules = _json(modules_file)
    spec = PoolingSpec()
    order = ("Transformer", "Pooling", "Dense", "Normalize")
    last = 0
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in order:
            raise ModelError(
                f"{modules_file}: module {module.get('type')} is not supported "
                "(bertetl runs Transformer, Pooling, Dense and Normalize modules)"
            )
        if order.index(kind) < last:
            raise ModelError(f"{modules_file}: module {kind} after {order[last]} is not supported")
        last = order.index(kind)
        folder = model_dir / module.get("path", "")
        if kind == "Pooling":
            cfg_file = folder / "config.json"
            cfg = _json(cfg_file)
            spec = PoolingSpec(
                pooling_mode(cfg, cfg_file), include_prompt=bool(cfg.get("include_prompt", True))
            )
        elif kind == "Dense":
            spec = PoolingSpec(
                spec.mode, spec.normalize, spec.include_prompt, (*spec.dense, dense_spec(folder))
            )
        elif kind == "Normalize":
            spec = PoolingSpec(spec.mode, True, spec.include_prompt, spec.dense)
    return spec


def exclude_prompt(attention_mask: Any, prompt_length: int) -> Any:
    """The mask without each row's first `prompt_length` tokens (rows padded on the right)."""
    if not prompt_length:
        return attention_mask
    mask = attention_mask.clone()
    mask[:, :prompt_length] = 0
    return mask


def pool(hidden: Any, attention_mask: Any, spec: PoolingSpec, prompt_length: int = 0) -> Any:
    """Sentence vectors from token vectors (rows padded on the right), as sentence-transformers'
    Pooling does; `prompt_length` leading tokens are left out when the spec says
    `include_prompt: false`; normalized when the spec says so (a model with Dense modules
    pools without it and `EmbeddingHead` normalizes after them)."""
    import torch

    hidden = hidden.float()
    full = attention_mask
    if not spec.include_prompt:
        attention_mask = exclude_prompt(attention_mask, prompt_length)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if spec.mode == "cls":
        first = attention_mask.to(torch.int64).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    elif spec.mode == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    elif spec.mode == "lasttoken":
        values, back = attention_mask.flip(1).max(1)
        width = hidden.shape[1]
        back = torch.where(values == 0, width - 1, back)
        pooled = (hidden * mask)[
            torch.arange(hidden.shape[0], device=hidden.device), width - 1 - back
        ]
    elif spec.mode == "weightedmean":
        weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        weights = weights.view(1, -1, 1) - full.to(torch.int64).argmax(dim=1).view(-1, 1, 1)
        weighted = mask * weights
        pooled = (hidden * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
    else:
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        pooled = summed / (counts if spec.mode == "mean" else torch.sqrt(counts))
    if spec.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


class EmbeddingHead:
    """The modules after pooling: each `Dense` (linear, activation, residual), then L2
    normalization when asked (the model's `Normalize`; long texts normalize only after their
    windows are combined)."""

    def __init__(self, spec: PoolingSpec, device: Any) -> None:
        import torch
        from safetensors.torch import load_file

        self.spec = spec
        self.layers: list[tuple[Any, Any, Any]] = []
        for dense in spec.dense:
            weights = load_file(dense.path / "model.safetensors", device=str(device))
            try:
                linear = torch.nn.Linear(dense.in_features, dense.out_features, bias=dense.bias)
                linear.load_state_dict(
                    {
                        k.removeprefix("linear."): v
                        for k, v in weights.items()
                        if k.startswith("linear.")
                    }
                )
                residual: Any = None
                if dense.residual and dense.in_features != dense.out_features:
                    residual = torch.nn.Linear(dense.in_features, dense.out_features, bias=False)
                    residual.load_state_dict({"weight": weights["residual.weight"]})
                    residual = residual.to(device).float().eval()
                elif dense.residual:
                    residual = torch.nn.Identity()
            except (KeyError, RuntimeError) as e:
                raise ModelError(
                    f"{dense.path}/model.safetensors: not the Dense weights ({e})"
                ) from e
            activation = getattr(torch.nn, dense.activation)()
            self.layers.append((linear.to(device).float().eval(), activation, residual))

    @property
    def width(self) -> int | None:
        """The output width when a Dense layer sets it (else the model's hidden size)."""
        return self.spec.dense[-1].out_features if self.spec.dense else None

    def __call__(self, pooled: Any, normalize: bool) -> Any:
        import torch

        for linear, activation, residual in self.layers:
            out = activation(linear(pooled))
            pooled = out + residual(pooled) if residual is not None else out
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled
