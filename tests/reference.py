"""Independent references: plain transformers forward passes, one text at a time, no padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_embeddings(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Mean pooling + L2 normalisation over an unpadded AutoModel forward, row by row."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32
    ).eval()
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
        model_dir, attn_implementation="eager", dtype=torch.float32
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


def reference_windows(
    ids: list[int], width: int, overlap: int, max_windows: int
) -> list[list[int]]:
    """The long-text rule written out plainly: `ids[k*S : k*S + W]` until a window reaches
    the end, at most `max_windows`."""
    stride = width - overlap
    windows = []
    k = 0
    while True:
        windows.append(ids[k * stride : k * stride + width])
        if k * stride + width >= len(ids) or len(windows) == max_windows:
            return windows
        k += 1


def reference_windowed(
    model_dir: Path,
    texts: list[str],
    max_length: int,
    overlap: int,
    max_windows: int,
    kind: str = "embed",
) -> tuple[np.ndarray, list[int]]:
    """Window mode by hand with plain transformers: each window wrapped in [CLS]/[SEP] and
    run on its own (no padding); embeddings mean-pooled per window, averaged weighted by the
    window's content tokens, then L2-normalised; classifier probabilities averaged the same
    way. Returns the per-row outputs and each row's window count."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cls = AutoModel if kind == "embed" else AutoModelForSequenceClassification
    model = cls.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    rows, counts = [], []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            windows = reference_windows(ids, max_length - 2, overlap, max_windows)
            outputs, weights = [], []
            # windows of one length run together (no padding, so no mask to get wrong)
            for length in sorted({len(w) for w in windows}):
                same = [w for w in windows if len(w) == length]
                cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
                input_ids = torch.tensor([[cls, *window, sep] for window in same])
                if kind == "embed":
                    outputs += list(model(input_ids=input_ids).last_hidden_state.mean(dim=1))
                else:
                    logits = model(input_ids=input_ids).logits
                    outputs += list(logits.sigmoid() if multi_label else logits.softmax(-1))
                weights += [length] * len(same)
            stacked = torch.stack(outputs).double()
            weight = torch.tensor(weights, dtype=torch.float64)[:, None]
            row = (stacked * weight).sum(0) / weight.sum()
            if kind == "embed":
                row = row / row.norm()
            rows.append(row.float().numpy())
            counts.append(len(windows))
    return np.stack(rows), counts
