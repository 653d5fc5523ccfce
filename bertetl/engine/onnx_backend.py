"""ONNX Runtime as the models' backend on the CPU (`--backend onnx`).

A model is exported once from its folder to ONNX (dynamic batch and sequence axes), quantized
to int8 by ONNX Runtime's dynamic quantization when asked, and cached outside the model folder
(which may be read-only). `OnnxModel` then stands in for the torch module: the stages' forward
code, pooling and heads are the same for both backends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bertetl.errors import ModelError
from bertetl.io.manifest import model_fingerprint

log = logging.getLogger(__name__)

ONNX_HINT = "pip install 'bertetl[onnx]'"
#: Part of the cache key: bump when the export or the quantization changes.
EXPORT_VERSION = 1
INPUTS = ("input_ids", "attention_mask")
#: The output each kind of model is exported with, under its transformers name.
OUTPUTS = {"embed": "last_hidden_state", "classify": "logits", "ner": "logits"}
#: The SHA-256 of the exported model's file, written by the export beside it.
CHECKSUM_FILE = "model.onnx.sha256"
#: The exported model's file inside its cache folder.
MODEL_FILE = "model.onnx"
#: A staging folder older than this was left by a killed export and is removed.
STALE_STAGING_S = 24 * 3600


def require_onnxruntime() -> Any:
    """The `onnxruntime` module (and `onnx`, which the export and the quantization need);
    either missing, a one-line `ModelError` naming the extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise ModelError(f"--backend onnx needs onnxruntime and onnx: {ONNX_HINT} ({e})") from e
    return onnxruntime


def cache_root() -> Path:
    """Where exported models are kept: `$BERTETL_CACHE/onnx`, else the user's cache folder
    (`$XDG_CACHE_HOME` or `~/.cache`) under `bertetl/onnx`."""
    if os.environ.get("BERTETL_CACHE"):
        return Path(os.environ["BERTETL_CACHE"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bertetl" / "onnx"


def cache_key(model_dir: Path, kind: str, quantize: str) -> str:
    """Hash of what the exported file depends on: the model folder's files, the kind of
    model, the quantization and the versions of the exporting and quantizing code."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    parts = {
        "model": model_fingerprint(model_dir),
        "kind": kind,
        "quantize": quantize,
        "export": EXPORT_VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def export_onnx(model: Any, path: Path, kind: str) -> None:
    """Export a transformers model (`kind`: embed, classify or ner) to ONNX at `path`: inputs
    `input_ids` and `attention_mask` (int64, batch x sequence, both dynamic), one output named
    as transformers names it (`OUTPUTS`).

    Uses torch's TorchScript exporter (`dynamo=False`): it needs no onnxscript, exports MiniLM
    in about 2 s (the dynamo exporter: 20 s; 7 s even for a 2-layer toy) and gives the same
    outputs to 1e-5. The example batch has padding, so the traced graph keeps the mask.
    """
    import torch

    output = OUTPUTS[kind]

    class Forward(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), output)

    input_ids = torch.full((2, 8), 5, dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    token_axes = {0: "batch", 1: "sequence"}
    axes = {name: token_axes for name in INPUTS}
    axes[output] = {0: "batch"} if kind == "classify" else token_axes  # ner: logits per token
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            Forward(model).eval(),
            (input_ids, attention_mask),
            str(path),
            dynamo=False,
            input_names=list(INPUTS),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
        )


def down_projections(path: Path, config: Any) -> list[str]:
    """Names of the MatMul nodes of the feed-forward down-projections: the ones whose weight
    has `intermediate_size` input rows (none when that size is unknown or equals hidden)."""
    import onnx

    width = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    if not width or width == getattr(config, "hidden_size", None):
        return []
    graph = onnx.load(str(path), load_external_data=False).graph
    rows = {init.name: list(init.dims) for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and len(rows.get(node.input[1], ())) == 2
        and rows[node.input[1]][0] == width
    ]


def quantize_onnx(source: Path, dest: Path, config: Any) -> None:
    """ONNX Runtime's dynamic int8 quantization of the MatMuls with a constant weight
    (QInt8 weights per tensor, uint8 activations quantized per batch), but the feed-forward
    down-projections, which stay fp32.

    Measured on MiniLM over 600 real reviews (cosine of the embeddings to fp32, mean / min):
    every MatMul per tensor 0.950 / 0.876; every MatMul per channel 0.992 / 0.979; per tensor
    without the down-projections 0.995 / 0.985 (the choice: as accurate and the fastest);
    per channel without them 0.996 / 0.990. The torch int8 path keeps the same layers fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its "consider pre-processing" notice on the root logger
    try:
        quantize_dynamic(
            source,
            dest,
            weight_type=QuantType.QInt8,
            per_channel=False,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=down_projections(source, config),
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.disable(previous)


def exported_model(
    model_dir: Path, kind: str, quantize: str, load: Callable[[], Any]
) -> tuple[Path, Any]:
    """The cached ONNX file of `model_dir` (as `kind`, with `quantize`) and the model's
    config. Not cached yet: `load()` gives the torch model (fp32, CPU), which is exported,
    quantized if asked, and dropped.

    The file is built in a hidden staging folder beside the cache entry and the folder is
    renamed into place, so a reader sees a finished file or none; when two processes export
    at once, the first rename wins and the other uses its file.
    """
    entry = cache_root() / cache_key(model_dir, kind, quantize)
    path = entry / MODEL_FILE
    if entry.is_dir() and (problem := _cache_problem(path)) is not None:
        log.warning("cached ONNX export %s is damaged (%s); exporting it again", entry, problem)
        _drop_entry(entry)
    if path.is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False
        )
        return path, config
    entry.parent.mkdir(parents=True, exist_ok=True)
    _drop_stale_staging(entry)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        model = load()
        config = model.config
        log.info("exporting %s to ONNX (%s, quantize %s) in %s", model_dir, kind, quantize, entry)
        exported = staging / ("fp32.onnx" if quantize == "int8" else MODEL_FILE)
        export_onnx(model, exported, kind)
        del model  # the torch weights are not needed any more
        if quantize == "int8":
            quantize_onnx(exported, staging / MODEL_FILE, config)
            exported.unlink()
        (staging / CHECKSUM_FILE).write_text(_sha256(staging / MODEL_FILE))
        _fsync(staging / MODEL_FILE)
        _fsync(staging / CHECKSUM_FILE)
        try:
            os.rename(staging, entry)
        except OSError:
            if not path.is_file():
                raise
            log.info("another process exported %s first; using its file", entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_problem(path: Path) -> str | None:
    """Why a cache entry cannot be trusted (its model file missing, or not the file the export
    wrote: its SHA-256 recorded beside it differs), or None: the cache is verified, never
    trusted."""
    checksum = path.parent / CHECKSUM_FILE
    if not path.is_file():
        return f"no {MODEL_FILE}"
    try:
        recorded = checksum.read_text().strip()
    except OSError:
        return f"no {CHECKSUM_FILE} (an export of an older bertetl, or cut short)"
    if _sha256(path) != recorded:
        return f"{MODEL_FILE} is not the file the export wrote (SHA-256 differs)"
    return None


def _drop_entry(entry: Path) -> None:
    """Remove a cache entry: renamed aside first (another process then finds none, not half
    of one), then deleted."""
    aside = entry.with_name(f".{entry.name}-damaged-{os.getpid()}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:  # another process dropped it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _drop_stale_staging(entry: Path) -> None:
    """Remove staging folders of `entry` that killed exports left (older than a day)."""
    now = time.time()
    for staging in entry.parent.glob(f".{entry.name}-*"):
        try:
            if now - staging.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(staging, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            continue


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


class OnnxModel:
    """An ONNX Runtime session in the place of the torch module: called with torch tensors
    `input_ids` and `attention_mask`, it returns an object holding the output as a torch
    tensor under its transformers name (`last_hidden_state` or `logits`); `.config` is the
    torch model's."""

    def __init__(self, path: Path, config: Any, output: str, threads: int) -> None:
        onnxruntime = require_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.path = path
        self.config = config
        self.output = output

    def __call__(self, input_ids: Any, attention_mask: Any) -> SimpleNamespace:
        import torch

        feed = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        (result,) = self.session.run([self.output], feed)
        return SimpleNamespace(**{self.output: torch.from_numpy(result)})


def onnx_model(model_dir: Path, kind: str, quantize: str, load: Callable[[], Any]) -> OnnxModel:
    """The model of `model_dir` as an `OnnxModel` (exported and cached on first use; `load`
    gives the torch model when it must be exported), on torch's number of threads."""
    import torch

    require_onnxruntime()
    path, config = exported_model(Path(model_dir), kind, quantize, load)
    return OnnxModel(path, config, OUTPUTS[kind], torch.get_num_threads())
