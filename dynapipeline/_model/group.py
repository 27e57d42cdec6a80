"""Containers: the shared base of StageGroup and Pipeline, and StageGroup itself."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import model_validator

from dynapipeline._model.checks import kind_of
from dynapipeline._model.component import Component, Stage, private_of, runner_of
from dynapipeline._model.strategy import CycleStrategy, ExecutionStrategy
from dynapipeline._model.stream import Stream
from dynapipeline.errors import ConfigurationError

__all__ = ["Container", "StageGroup"]


class Container(Component):
    """A component whose ``execute`` runs its members with a cycle and an execution strategy.

    Membership is fixed at construction: the members' runners are resolved once.
    """

    if TYPE_CHECKING:
        cycle_strategy: CycleStrategy
        execution_strategy: ExecutionStrategy
    else:
        # Any: _build_plan checks them, with messages naming the container.
        cycle_strategy: Any
        execution_strategy: Any

    _members_field: ClassVar[str] = ""
    _members_noun: ClassVar[str] = "members"  # what messages call a list of them: "a list of stages"
    _member_type: ClassVar[type[Component] | tuple[type[Component], ...]] = Component
    _members: tuple[Component, ...] = ()
    _plan: tuple[Any, Any, tuple[Any, ...]] = (None, None, ())

    @model_validator(mode="before")
    @classmethod
    def _check_members_is_a_list(cls, data: Any) -> Any:
        # Before pydantic's list validation, which would iterate one component into its (field, value) pairs.
        if not isinstance(data, dict) or cls._members_field not in data:
            return data
        members = data[cls._members_field]
        if isinstance(members, (list, tuple)):
            return data
        if isinstance(members, Component):
            got = f"{type(members).__name__} {members.__dict__.get('name')!r} (wrap it in a list)"
        elif isinstance(members, (str, bytes, Mapping)) or not isinstance(members, Iterable):
            got = kind_of(members)
        else:
            return data  # any other iterable (a generator) becomes a list
        raise ConfigurationError(f"{cls.__name__} {data.get('name')!r}: field '{cls._members_field}' must be "
                                 f"a list of {cls._members_noun}, got {got}")

    def _bind_runner(self) -> None:
        # Also on copies: a copy runs its own members (after model_copy's update).
        super()._bind_runner()
        self._build_plan()

    def _build_plan(self) -> None:
        """Validate strategies and members and resolve the members' runners once."""
        # Hot for big groups: fields are read from __dict__ and private attributes from
        # __pydantic_private__, skipping pydantic's per-access __getattr__.
        fields = self.__dict__
        cycle_strategy = fields["cycle_strategy"]
        execution_strategy = fields["execution_strategy"]
        if not isinstance(cycle_strategy, CycleStrategy):
            raise ConfigurationError(
                f"{self._label()}: field 'cycle_strategy' must be a cycle strategy, "
                f"got {kind_of(cycle_strategy)}"
            )
        if not isinstance(execution_strategy, ExecutionStrategy):
            raise ConfigurationError(
                f"{self._label()}: field 'execution_strategy' must be an execution strategy, "
                f"got {kind_of(execution_strategy)}"
            )
        field = self._members_field
        members = fields[field]
        if not isinstance(members, (list, tuple)):
            raise ConfigurationError(f"{self._label()}: field '{field}' must be a list")
        member_type = self._member_type
        runners = []
        for index, member in enumerate(members):
            if not isinstance(member, member_type):
                kinds = member_type if isinstance(member_type, tuple) else (member_type,)
                raise ConfigurationError(
                    f"{self._label()}: field '{field}[{index}]' must be a "
                    f"{' or '.join(kind.__name__ for kind in kinds)}, got {kind_of(member)}"
                )
            runners.append(runner_of(member))
        if len({id(member) for member in members}) != len(members):
            self._reject_repeat(field, members)
        private = private_of(self)
        private["_members"] = tuple(members)
        private["_plan"] = (cycle_strategy.run_cycles, execution_strategy.dispatch, tuple(runners))

    def _reject_repeat(self, field: str, members: Sequence[Component]) -> None:
        seen: set[int] = set()
        for index, member in enumerate(members):
            if id(member) in seen:
                raise ConfigurationError(
                    f"{self._label()}: field '{field}[{index}]' repeats {kind_of(member)} {member.name!r}; "
                    "the same object may appear only once in a group"
                )
            seen.add(id(member))

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        cycles, dispatch, runners = self._plan
        return await cycles(dispatch, runners, args, kwargs)

    def _walk(self, depth: int) -> Iterator[tuple[int, Component]]:
        yield depth, self
        for member in private_of(self)["_members"]:
            yield from member._walk(depth + 1)

    def iter_components(self) -> Iterator[Component]:
        """This container, then every component below it, depth first."""
        return iter(self._components())

    def _components(self) -> list[Component]:
        # A list built without generators: pipelines walk every stage when they are built.
        out: list[Component] = [self]
        for member in private_of(self)["_members"]:
            if isinstance(member, Container):
                out += member._components()
            elif type(member) is Stream:
                out += member.iter_components()
            else:
                out.append(member)
        return out


class StageGroup(Container):
    """Stages that share an execution strategy and a cycle strategy."""

    if TYPE_CHECKING:
        stages: Sequence[Stage]
    else:
        stages: list[Any]

    _members_field: ClassVar[str] = "stages"
    _members_noun: ClassVar[str] = "stages"
    _member_type: ClassVar[type[Component]] = Stage
