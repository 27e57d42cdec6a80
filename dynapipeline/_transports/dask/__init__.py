"""The Dask backend: batches and stream items as tasks on a Dask cluster."""
