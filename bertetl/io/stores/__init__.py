"""Where data lives: a local path or an object store (S3, GCS, Azure Blob Storage).

- `locations`: a path or URI as a `Location` (its filesystem and path), storage options,
  table references (`TableRef`), and the one-line errors of a store that cannot be reached;
- `objects`: what bertetl does to objects beyond reading them: whole uploads, deletes of its
  own objects, this machine's staging for a store, and the DEST lock (a conditional create
  with a lease);
- `clients`: the store-specific clients those need (boto3, google-cloud-storage, azure-blob).
"""
