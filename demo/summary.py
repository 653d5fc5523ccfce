"""Print the demo's summary: rows, rows/s, sentiment label counts, held-out accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("demo_dir", type=Path)
    args = parser.parse_args()
    report = json.loads((args.demo_dir / "report.json").read_text())
    metrics = json.loads((args.demo_dir / "sentiment-model" / "training_metrics.json").read_text())
    enriched = pl.scan_parquet(args.demo_dir / "enriched" / "**" / "*.parquet")
    per_category = (
        enriched.group_by("category", "label")
        .agg(pl.len().alias("rows"))
        .sort("category", "label")
        .collect()
    )
    totals = enriched.select(
        pl.len().alias("rows"),
        pl.col("embedding").is_not_null().sum().alias("embedded"),
        pl.col("enrich_error").is_not_null().sum().alias("with_enrich_error"),
    ).collect()
    embed = report["stages"].get("embed", {})
    print("\n=== bertetl demo: rotten-tomatoes reviews ===")
    print(
        f"rows enriched      : {totals['rows'][0]} ({totals['embedded'][0]} embedded, "
        f"{totals['with_enrich_error'][0]} with enrich_error)"
    )
    print(
        f"enrich time        : {report['seconds']:.1f}s -> {report['rows_per_second']:.0f} rows/s "
        f"(embed + classify, Parquet in and out, CPU)"
    )
    print(f"padding waste      : {embed.get('padding_waste', 0):.1%} of embed batch positions")
    print(f"label counts       : {report['label_counts'].get('label', {})}")
    print(
        f"held-out accuracy  : {metrics['accuracy']:.3f} (macro-F1 {metrics['macro_f1']:.3f}, "
        f"{metrics['eval_rows']} fresh/rotten reviews held out by `bertetl train`; report: "
        f"{args.demo_dir / 'sentiment-model' / metrics.get('eval_dir', 'eval') / 'report.html'})"
    )
    print("sentiment by the corpus' own category (plot summaries have no sentiment label):")
    print(per_category)
    print(f"output             : {args.demo_dir / 'enriched'}")


if __name__ == "__main__":
    main()
