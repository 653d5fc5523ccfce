"""Files in and out: discover and stream Parquet, write it atomically, lock and swap folders,
hive partitions, manifests and the paths a run may touch. Knows nothing of models."""
