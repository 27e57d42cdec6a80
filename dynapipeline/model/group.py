"""Containers: the shared base of StageGroup and Pipeline, and StageGroup itself."""

from __future__ import annotations

from typing import Any, ClassVar

from dynapipeline.errors import ConfigurationError
from dynapipeline.model.component import Component, Stage
from dynapipeline.model.strategy import CycleStrategy, ExecutionStrategy

__all__ = ["Container", "StageGroup"]


class Container(Component):
    """A component whose ``execute`` runs its members with a cycle and an execution strategy.

    Membership is fixed at construction: the members' runners are resolved once.
    """

    cycle_strategy: Any
    execution_strategy: Any

    _members_field: ClassVar[str] = ""
    _member_type: ClassVar[type[Component]] = Component
    _members: tuple[Any, ...] = ()
    _plan: tuple[Any, Any, tuple[Any, ...]] = (None, None, ())

    def _bind_runner(self) -> None:
        # Also on copies: a copy runs its own members (after model_copy's update).
        super()._bind_runner()
        self._build_plan()

    def _build_plan(self) -> None:
        """Validate strategies and members and resolve the members' runners once."""
        label = f"{type(self).__name__} {self.name!r}"
        if not isinstance(self.cycle_strategy, CycleStrategy):
            raise ConfigurationError(
                f"{label}: field 'cycle_strategy' must be a cycle strategy, "
                f"got {type(self.cycle_strategy).__name__}"
            )
        if not isinstance(self.execution_strategy, ExecutionStrategy):
            raise ConfigurationError(
                f"{label}: field 'execution_strategy' must be an execution strategy, "
                f"got {type(self.execution_strategy).__name__}"
            )
        field = self._members_field
        members = getattr(self, field)
        if not isinstance(members, (list, tuple)):
            raise ConfigurationError(f"{label}: field '{field}' must be a list")
        seen: set[int] = set()
        for index, member in enumerate(members):
            if not isinstance(member, self._member_type):
                raise ConfigurationError(
                    f"{label}: field '{field}[{index}]' must be a {self._member_type.__name__}, "
                    f"got {type(member).__name__}"
                )
            if id(member) in seen:
                raise ConfigurationError(
                    f"{label}: field '{field}[{index}]' repeats {type(member).__name__} {member.name!r}; "
                    "the same object may appear only once in a group"
                )
            seen.add(id(member))
        self._members = tuple(members)
        runners = tuple(m._runner for m in members)
        self._plan = (self.cycle_strategy.run_cycles, self.execution_strategy.dispatch, runners)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        cycles, dispatch, runners = self._plan
        return await cycles(dispatch, runners, args, kwargs)

    def report(self) -> str:
        """A text table of this container and everything below it: runs, total, mean and max time."""
        rows = [("component", "kind", "runs", "total s", "mean ms", "max ms")]
        for depth, component in self._walk(0):
            stats = component.stats
            rows.append((
                "  " * depth + component.name,
                type(component).__name__,
                str(stats.count),
                f"{stats.total:.6f}",
                f"{stats.mean * 1e3:.3f}",
                f"{stats.max * 1e3:.3f}",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        # Names and kinds align left, numbers right.
        lines = [
            "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows
        ]
        return "\n".join(line.rstrip() for line in lines)

    def _walk(self, depth: int) -> Any:
        yield depth, self
        for member in self._members:
            if isinstance(member, Container):
                yield from member._walk(depth + 1)
            else:
                yield depth + 1, member

    def iter_components(self) -> Any:
        """This container, then every component below it, depth first."""
        for _, component in self._walk(0):
            yield component


class StageGroup(Container):
    """Stages that share an execution strategy and a cycle strategy."""

    stages: list[Any]

    _members_field: ClassVar[str] = "stages"
    _member_type: ClassVar[type[Component]] = Stage
