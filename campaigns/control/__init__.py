"""A campaign's lifecycle: bodies, the checklist, create/start/pause/cancel, the scheduler."""
