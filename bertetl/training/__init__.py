"""Fine-tuning a sequence classifier from a labelled table (`bertetl train`)."""
