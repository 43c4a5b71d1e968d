"""Usage metering: one record per request that reached an engine, written idempotently with the
rate-limit settlement; the retry queue and spill file that keep it through Redis outages; the
queries and exports built on it."""
