"""Shared by the process and Dask backends: what ships components and items to another process and back."""
