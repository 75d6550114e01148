"""Statistics, per-recipient statuses, retry statistics and the run's report, read from rows."""
