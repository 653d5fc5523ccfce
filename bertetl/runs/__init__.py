"""Runs over a whole SOURCE: enrich every file, or plan and commit partitions one by one
(manifests, row reuse, staged partitions swapped in). Usable without Prefect."""
