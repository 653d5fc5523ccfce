"""`bertetl bench systems`: the engine against the baselines a user would write, in one run.

Every system runs in its own subprocess (so its peak RSS is its own) on the same texts, with
the model loaded before the clock starts; each is timed over several repetitions after a
warm-up and the median is reported, with ratios of the engine to each baseline.

One module per job: `config` (what to run, `BenchConfig`), `inputs` (the texts), `runners`
(each system set up on the texts), `measure` (one system timed in its process), `run` (every
system, the host path and the ratios: `run_bench`), `table` (the report as tables), and
`common`, what they share.
"""

from __future__ import annotations

from bertetl.bench.systems.common import forward_flops, peak_flops
from bertetl.bench.systems.config import (
    SYSTEMS,
    TASK_SYSTEMS,
    VARIANTS,
    BenchConfig,
    engine_fields,
    split_task,
)
from bertetl.bench.systems.inputs import check_inputs, input_texts, own_input
from bertetl.bench.systems.run import environment, run_bench
from bertetl.bench.systems.table import format_table

__all__ = [
    "SYSTEMS",
    "TASK_SYSTEMS",
    "VARIANTS",
    "BenchConfig",
    "check_inputs",
    "engine_fields",
    "environment",
    "format_table",
    "forward_flops",
    "input_texts",
    "own_input",
    "peak_flops",
    "run_bench",
    "split_task",
]
