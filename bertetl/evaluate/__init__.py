"""Evaluate a classifier on a labelled table (`bertetl evaluate`, and `bertetl train`'s held-out
report): config (EvaluateConfig), predictions (read true labels and the engine's prediction
columns into arrays), metrics (scikit-learn, the metrics.json schema), plots (matplotlib PNGs),
page (the self-contained report.html) and run (check, run the model through the engine, write).

Beside `runs` and `training` in the layers: `run` calls `bertetl.runs.enrich` to run a model,
and `bertetl.training` uses metrics, plots and page for its held-out split.
"""
