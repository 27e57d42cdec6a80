"""Public home of the contexts (``from dynapipeline.contexts import ...``)."""

from dynapipeline._model.contexts import AsyncLockableContext, Context, ProtectedContext

__all__ = ["AsyncLockableContext", "Context", "ProtectedContext"]
