"""Tiny random sentence-transformers models of each kind bertetl runs, built in the tests: a
BERT with prompts (and one pooling without them), a Qwen3 decoder with last-token pooling, a
ModernBERT, and a BERT with a Dense module. Saved as sentence-transformers saves them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import _build_tokenizer, _vocab_size

PROMPTS = {"query": "query: ", "passage": "passage: "}
TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}


def _modules(path: Path, pooling: dict, dense: dict | None = None, normalize: bool = True) -> None:
    """modules.json and each module's folder: Pooling (`pooling` is its config), an optional
    Dense (`dense`: its config; weights written by the caller), Normalize."""
    modules = [
        dict(TRANSFORMER),
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if dense is not None:
        modules.append({"path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        (path / "2_Dense").mkdir(exist_ok=True)
        (path / "2_Dense" / "config.json").write_text(json.dumps(dense))
    if normalize:
        modules.append({"path": "3_Normalize", "type": "sentence_transformers.models.Normalize"})
    for index, module in enumerate(modules):
        module.update(idx=index, name=str(index))
    (path / "modules.json").write_text(json.dumps(modules))


def bert_with_prompts(base: Path, path: Path, include_prompt: bool = True) -> Path:
    """The tiny BERT (`tiny_embed_dir`) with E5-style prompts, `query` the default; pooling
    leaves the prompt out unless `include_prompt`."""
    shutil.copytree(base, path)
    _modules(
        path,
        {"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": include_prompt},
    )
    settings = {"prompts": PROMPTS, "default_prompt_name": "query"}
    (path / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return path


def bert_with_dense(base: Path, path: Path) -> Path:
    """The tiny BERT with CLS pooling, then a Dense 32 -> 16 (tanh), then Normalize."""
    import torch
    from safetensors.torch import save_file

    shutil.copytree(base, path)
    dense = {
        "in_features": 32,
        "out_features": 16,
        "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh",
    }
    _modules(path, {"embedding_dimension": 32, "pooling_mode": "cls"}, dense)
    torch.manual_seed(1)
    weights = {"linear.weight": torch.randn(16, 32) * 0.3, "linear.bias": torch.randn(16) * 0.1}
    save_file(weights, str(path / "2_Dense" / "model.safetensors"))
    return path


def qwen3_last_token(path: Path) -> Path:
    """A random 2-layer Qwen3 decoder embedder as Qwen3-Embedding is laid out: its tokenizer
    appends <|endoftext|> to every text and pads on the left; last-token pooling, Normalize;
    an instruction prompt for queries."""
    import torch
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    path.mkdir(parents=True)
    _build_tokenizer(path)
    backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    backend.add_special_tokens(["<|endoftext|>"])
    eos = backend.token_to_id("<|endoftext|>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)]
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (path / name).unlink(missing_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        padding_side="left",
        model_max_length=64,
    )
    fast.save_pretrained(path)
    torch.manual_seed(2)
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        initializer_range=0.5,
        pad_token_id=eos,
        eos_token_id=eos,
        bos_token_id=None,
    )
    Qwen3Model(config).save_pretrained(path)
    _modules(path, {"embedding_dimension": 32, "pooling_mode": "lasttoken"})
    settings = {
        "prompts": {"query": "Instruct: find reviews\nQuery:", "document": ""},
        "default_prompt_name": None,
    }
    (path / "config_sentence_transformers.json").write_text(json.dumps(settings))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return path


def modernbert(path: Path) -> Path:
    """A random 2-layer ModernBERT encoder with mean pooling and Normalize."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    path.mkdir(parents=True)
    _build_tokenizer(path)
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    torch.manual_seed(3)
    config = ModernBertConfig(
        vocab_size=_vocab_size(path),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        global_attn_every_n_layers=2,
        local_attention=16,
        initializer_range=0.5,
        pad_token_id=vocab["[PAD]"],
        cls_token_id=vocab["[CLS]"],
        sep_token_id=vocab["[SEP]"],
        bos_token_id=vocab["[CLS]"],
        eos_token_id=vocab["[SEP]"],
    )
    ModernBertModel(config).save_pretrained(path)
    _modules(path, {"embedding_dimension": 32, "pooling_mode": "mean"})
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return path
