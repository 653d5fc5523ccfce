-- Which partitions a backfill or incremental run enriches, and why.
--
-- Tables (built by bertetl.runs.plan.plan_partitions):
--   source    (partition, input_fingerprint)            one row per source partition in range
--   manifests (partition, input_fingerprint, config_hash, damage)
--                                                        the committed partitions under DEST;
--             damage: null when the outputs the manifest lists verify, else which file(s) are
--             missing, truncated or changed (the files are the truth, the manifest a claim)
--   params    (config_hash, force)                       this run's model+config hash, --force
--
-- One row per partition found in either table, in partition order:
--   action: 'enrich' | 'skip' | 'orphan' (committed output whose source partition is gone;
--           reported, never deleted)
--   reason: why ('damaged: <file> <problem>' for damaged outputs, redone even when forced
--           or changed, so the damage is what the run reports)
SELECT
    partition,
    CASE reason
        WHEN 'source partition removed' THEN 'orphan'
        WHEN 'unchanged' THEN 'skip'
        ELSE 'enrich'
    END AS action,
    reason
FROM (
    SELECT
        COALESCE(s.partition, m.partition) AS partition,
        CASE
            WHEN s.partition IS NULL THEN 'source partition removed'
            WHEN m.partition IS NULL THEN 'new'
            WHEN m.damage IS NOT NULL THEN 'damaged: ' || m.damage
            WHEN p.force THEN 'forced'
            WHEN m.config_hash <> p.config_hash THEN 'model or config changed'
            WHEN m.input_fingerprint <> s.input_fingerprint THEN 'input changed'
            ELSE 'unchanged'
        END AS reason
    FROM source AS s
    FULL JOIN manifests AS m ON s.partition = m.partition
    CROSS JOIN params AS p
) AS decided
ORDER BY partition
