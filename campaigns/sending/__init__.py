"""The send path: claim, render, pace, send, record; the rate limiter, the send engine, providers."""
