"""Independent references: plain transformers forward passes, one text at a time, no padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_embeddings(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Mean pooling + L2 normalisation over an unpadded AutoModel forward, row by row."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            vector = hidden.mean(dim=0)
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


def reference_probabilities(
    model_dir: Path, texts: list[str], max_length: int, multi_label: bool = False
) -> np.ndarray:
    """Class probabilities from an unpadded AutoModelForSequenceClassification forward."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, attn_implementation="eager"
    ).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**enc).logits[0]
            rows.append((logits.sigmoid() if multi_label else logits.softmax(-1)).numpy())
    return np.stack(rows)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
