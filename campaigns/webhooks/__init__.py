"""Webhooks in: the receiver, the parser, ingestion into statuses, replies and opt-outs."""
