"""The model layer: components, contexts, handlers, strategy interfaces, streams, the pipeline factory."""
