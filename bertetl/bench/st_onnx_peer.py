"""sentence-transformers' own ONNX int8, run as a script in the peer venv (`make peers`).

It imports nothing of bertetl: the venv holds sentence-transformers 5 with optimum-onnx, which
needs transformers < 4.58, beside which bertetl (transformers 5) cannot be installed.

    python st_onnx_peer.py export MODEL_DIR FOLDER
        copy MODEL_DIR to FOLDER, export it to ONNX (saved: onnx/model.onnx) and quantize it
        with `export_dynamic_quantized_onnx_model` and the preset for this CPU
    python st_onnx_peer.py run FOLDER TEXTS_JSON INT8_NPY FP32_NPY REPEATS
        load the int8 model, encode the first 64 texts (warm-up), then all of them REPEATS
        times (batch 32), save the last embeddings; then, not timed, the fp32 ONNX model's

Each prints one JSON line (the preset, versions, seconds, peak RSS) as its last line; an
error is one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

BATCH = 32
FP32_FILE = "onnx/model.onnx"
#: transformers 5 saves a tokenizer as `TokenizersBackend`, a class 4.x does not know; its
#: generic class reads the same tokenizer.json and special tokens.
TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def preset() -> str:
    """The quantization preset sentence-transformers offers for this CPU, as its docs advise
    (avx2 where the CPU's flags cannot be read)."""
    if platform.machine() in ("aarch64", "arm64"):
        return "arm64"
    flags: set[str] = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def int8_file(folder: Path) -> str | None:
    """The quantized file the preset wrote (`model_qint8_avx512.onnx`; avx2's weights are
    unsigned: `model_quint8_avx2.onnx`), or None before the export."""
    found = sorted((folder / "onnx").glob(f"model_*int8_{preset()}.onnx"))
    return f"onnx/{found[0].name}" if found else None


def _readable_by_transformers_4(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        name = config.get("tokenizer_class")
        if name in TOKENIZER_CLASSES:
            config["tokenizer_class"] = TOKENIZER_CLASSES[name]
            path.write_text(json.dumps(config, indent=2))


def export(model_dir: Path, folder: Path) -> dict[str, object]:
    """Copy, export and quantize into a staging folder renamed to FOLDER when done, so a killed
    export is redone, not reused; FOLDER already there is used as it is."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if not (folder / FP32_FILE).is_file() or int8_file(folder) is None:
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        skip = shutil.ignore_patterns("onnx")  # an ONNX file the folder ships is not ours
        shutil.copytree(model_dir, staging, ignore=skip)
        _readable_by_transformers_4(staging)
        model = SentenceTransformer(str(staging), backend="onnx", device="cpu")
        model.save_pretrained(str(staging))  # the fp32 export: onnx/model.onnx
        export_dynamic_quantized_onnx_model(model, preset(), str(staging))
        if not (staging / FP32_FILE).is_file() or int8_file(staging) is None:
            fail(f"the export wrote no {FP32_FILE} or no int8 file for {preset()} in {staging}")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return {"preset": preset(), "file": int8_file(folder)}


def run(folder: Path, texts_json: Path, int8: Path, fp32: Path, repeats: int) -> dict[str, object]:
    """Time the int8 model's encodes; save its embeddings and, untimed, the fp32 model's."""
    import numpy as np
    import onnxruntime
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    name = int8_file(folder)
    if name is None:  # never fall back to the fp32 file and call it int8
        fail(f"no int8 model for {preset()} in {folder}: run export first")
    texts = json.loads(texts_json.read_text())
    model = SentenceTransformer(
        str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": name}
    )
    model.encode(texts[:64], batch_size=BATCH)
    seconds = []
    out = None
    for _ in range(repeats):
        started = time.perf_counter()
        out = model.encode(texts, batch_size=BATCH, show_progress_bar=False)
        seconds.append(time.perf_counter() - started)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(int8, np.asarray(out, dtype=np.float32))
    full = SentenceTransformer(
        str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": FP32_FILE}
    )
    np.save(fp32, np.asarray(full.encode(texts, batch_size=BATCH), dtype=np.float32))
    return {
        "preset": preset(),
        "file": name,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb,
        "max_seq_length": model.max_seq_length,
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def fail(message: str) -> None:
    """One line on stderr, exit 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    """`export MODEL_DIR FOLDER` or `run FOLDER TEXTS_JSON INT8_NPY FP32_NPY REPEATS`."""
    command, *args = argv
    if command == "export" and len(args) == 2:
        report = export(Path(args[0]), Path(args[1]))
    elif command == "run" and len(args) == 5:
        report = run(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), int(args[4]))
    else:
        fail(f"usage: export MODEL_DIR FOLDER | run FOLDER TEXTS INT8 FP32 REPEATS, not {argv}")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
