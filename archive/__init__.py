"""The results store, the archive service that fills it from the result topics, search, the
audit log and the operator console (``edge-offload archive | search | audit | operator | console``)."""
