"""sentence-transformers' own ONNX int8, run as a script in the peer venv (`make peers`).

It imports nothing of bertetl: the venv holds sentence-transformers 5 with optimum-onnx, which
needs transformers < 4.58, beside which bertetl (transformers 5) cannot be installed.

    python st_onnx_peer.py export MODEL_DIR FOLDER
        copy MODEL_DIR to FOLDER, export it to ONNX and quantize it with
        `export_dynamic_quantized_onnx_model` and the preset for this CPU (once)
    python st_onnx_peer.py run FOLDER TEXTS_JSON EMBEDDINGS_NPY REPEATS
        load the int8 model, encode the first 64 texts (warm-up), then all of them REPEATS
        times (batch 32), save the last embeddings

Each prints one JSON line (the preset, versions, seconds, peak RSS) as its last line.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

BATCH = 32


def preset() -> str:
    """The quantization preset sentence-transformers offers for this CPU, as its docs advise."""
    if platform.machine() in ("aarch64", "arm64"):
        return "arm64"
    flags: set[str] = set()
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


def model_file(folder: Path) -> str | None:
    """The quantized file the preset wrote (`model_qint8_avx512.onnx`; avx2's weights are
    unsigned: `model_quint8_avx2.onnx`), or None before the export."""
    found = sorted((folder / "onnx").glob(f"model_*int8_{preset()}.onnx"))
    return f"onnx/{found[0].name}" if found else None


def export(model_dir: Path, folder: Path) -> dict[str, object]:
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if model_file(folder) is None:
        skip = shutil.ignore_patterns("onnx")  # an ONNX file the folder ships is not ours
        shutil.copytree(model_dir, folder, dirs_exist_ok=True, ignore=skip)
        model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
        export_dynamic_quantized_onnx_model(model, preset(), str(folder))
    return {"preset": preset(), "file": model_file(folder)}


def run(folder: Path, texts_json: Path, embeddings: Path, repeats: int) -> dict[str, object]:
    import numpy as np
    import onnxruntime
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    texts = json.loads(texts_json.read_text())
    model = SentenceTransformer(
        str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": model_file(folder)}
    )
    model.encode(texts[:64], batch_size=BATCH)
    seconds = []
    out = None
    for _ in range(repeats):
        started = time.perf_counter()
        out = model.encode(texts, batch_size=BATCH, show_progress_bar=False)
        seconds.append(time.perf_counter() - started)
    np.save(embeddings, np.asarray(out, dtype=np.float32))
    return {
        "preset": preset(),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "max_seq_length": model.max_seq_length,
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "export":
        report = export(Path(args[0]), Path(args[1]))
    elif command == "run":
        report = run(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown command {command!r} (export, run)")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
