"""The transports layer: strategies that run components off the event loop's thread (threads, processes, Dask)."""
