"""The process backend: a warm pool of worker processes fed through pipes."""
