"""The engine: stages over Arrow record batches (validate, tokenize, encoders) and the
`Pipeline` that threads them for one file. Knows nothing of executors, flows or Prefect."""
