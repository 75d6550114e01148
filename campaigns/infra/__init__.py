"""Infrastructure: the embedded servers, a threaded ASGI server, the fault suite's pause points."""
