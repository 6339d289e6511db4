"""The TF-Hub contract for consumers: the export binary, ``SIGNATURES.md`` and runnable examples."""
