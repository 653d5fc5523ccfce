"""CUDA graphs (`--cuda-graphs`): one captured forward pass per batch shape, replayed after.

A small encoder on a large GPU can spend much of a forward pass launching kernels (each layer
is a dozen or more small ones, over a batch the device may finish in milliseconds). A CUDA
graph records those launches once and replays them in one call; whether that wins here is for
`make gpu-check` to measure. A graph is fixed to the shapes it was captured with, so batches
are padded to a few shapes (`batching.graph_shape`: widths in steps of 32 tokens, power-of-two
row counts) and each shape is captured on first use, with torch's own `torch.cuda.graph`. All
graphs share one memory pool (as vLLM's do): they run one at a time, and each output is copied
to the host before the next replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Eager passes on a side stream before a shape is captured (cuBLAS and SDPA pick and
#: initialise their kernels there, not inside the capture).
WARMUP_PASSES = 1


@dataclass
class CapturedShape:
    """A captured forward pass: the static inputs it reads and the output it writes."""

    input_ids: Any
    attention_mask: Any
    graph: Any
    output: Any


class CudaGraphs:
    """`forward(input_ids, attention_mask)` replayed from a CUDA graph per input shape.

    `forward` must be a pure function of its two device tensors (a model stage's `_forward`
    under `torch.inference_mode`). The tensor returned is the graph's own output buffer: read
    it (copy it to the host) before the next call.
    """

    def __init__(self, forward: Callable[[Any, Any], Any], device: Any) -> None:
        """`device`: a CUDA device (`encoders.runtime_device` refuses `--cuda-graphs` on
        others)."""
        import torch

        self.forward = forward
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.shapes: dict[tuple[int, ...], CapturedShape] = {}

    @property
    def captures(self) -> int:
        """How many shapes have been captured."""
        return len(self.shapes)

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        key = tuple(input_ids.shape)
        captured = self.shapes.get(key)
        if captured is None:
            captured = self.shapes[key] = self._capture(input_ids, attention_mask)
        else:
            captured.input_ids.copy_(input_ids, non_blocking=True)
            captured.attention_mask.copy_(attention_mask, non_blocking=True)
        captured.graph.replay()
        return captured.output

    def _capture(self, input_ids: Any, attention_mask: Any) -> CapturedShape:
        """Warm up on a side stream, then capture one pass into this shape's graph (the static
        inputs are copies of this batch's, so replaying it computes this batch)."""
        import torch

        static_ids, static_mask = input_ids.clone(), attention_mask.clone()
        # Warm up on a mask with one padded position: a capture always builds the attention
        # mask (transformers skips an all-ones mask only outside a capture), so the masked
        # attention kernels are the ones to load before capturing, even for a full batch.
        warm_mask = static_mask.clone()
        warm_mask[-1, -1] = 0
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self.forward(static_ids, warm_mask)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's CUDA calls are checked against the capture, so
        # another thread's (a second model stage's, pinned host memory) cannot break it
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            # a copy: the forward's result may be a view of a larger buffer (CLS pooling is
            # `hidden[:, 0]`), which the graph would otherwise keep from the pool
            output = self.forward(static_ids, static_mask).clone()
        return CapturedShape(static_ids, static_mask, graph, output)
