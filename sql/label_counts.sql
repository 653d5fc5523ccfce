-- Label counts per partition of an enriched table (what `bertetl summary` prints).
--
-- Table `enriched`: the output read with its hive partition folders, with the columns
-- renamed by bertetl.summary so this text never depends on user input:
--   partition     the partition value ('' for an unpartitioned table)
--   label         the predicted label (null where the row was not encoded)
SELECT
    partition,
    COALESCE(label, '(not encoded)') AS label,
    COUNT(*) AS rows
FROM enriched
GROUP BY partition, label
ORDER BY partition, rows DESC, label
