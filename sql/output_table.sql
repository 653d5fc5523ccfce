-- The enriched output table, and a per-partition check of its row accounting.
--
-- Schema of every output file: all input columns first, unchanged (names, types, order of
-- rows), then the columns bertetl adds (each with the --prefix, default none):
--   embedding     FIXED_SIZE_LIST<FLOAT32>[dim]  sentence vector (pooling and normalisation as
--                                                the model's sentence-transformers config says)
--   label         STRING                         top label of the classifier
--   score         FLOAT32                        its probability
--   scores        FIXED_SIZE_LIST<FLOAT32>[n]    every label's probability in id order (--scores;
--                                                label names in the field metadata)
--   labels        LIST<STRING>                   labels above --threshold (multi-label models)
--   NAME_label, NAME_score, NAME_scores, NAME_labels   the same per named head (--classify
--                                                NAME=DIR, --zero-shot NAME=LABELS)
--   NAME_entities LIST<STRUCT<start INT32, end INT32, label STRING, score FLOAT32, text STRING>>
--                                                named entities (--ner NAME=DIR), character offsets
--   NAME_redacted STRING                         the text with entities as [LABEL] (--redact)
--   tokens        INT32                          content tokens of the whole text (--token-stats)
--   windows       INT16                          token windows the model ran on (--token-stats)
--   truncated     BOOLEAN                        some text was not seen by the model (--token-stats)
--   enrich_error  STRING                         why the row was not encoded (null text, empty,
--                                                whitespace only); null for encoded rows
-- Partition values stay in the folder names (date=2026-11-01/); hive readers add them back.
-- Each partition folder has a _manifest.json (rows_in, rows_out, rows_inferred, rows_reused,
-- rows_failed, rows_truncated, input and model fingerprints, and each output file's size,
-- mtime, SHA-256 and rows; label_counts, embedding_means {count, mean: the centroid, float32}
-- and score_means {count, mean}, by column, over the rows with a value), written last as the
-- commit marker; `bertetl summary` reads only outputs that match it, and compares the
-- partitions' label counts and centroids for drift.
--
-- Table `enriched` (columns renamed by bertetl.summary): partition, encoded (the model output
-- column is not null), enrich_error. `inconsistent` must be 0: a row has an output or an error.
SELECT
    partition,
    COUNT(*) AS rows,
    SUM(CASE WHEN encoded THEN 1 ELSE 0 END) AS encoded,
    SUM(CASE WHEN enrich_error IS NOT NULL THEN 1 ELSE 0 END) AS not_encoded,
    SUM(CASE WHEN encoded = (enrich_error IS NOT NULL) THEN 1 ELSE 0 END) AS inconsistent
FROM enriched
GROUP BY partition
ORDER BY partition
