"""Policy reconciliation over gobgpd's gRPC API (used by ``GrpcEngine.sync_policies``).

Order, so that nothing is ever referenced before it exists or deleted while in use:
1. defined sets: missing ones added; changed ones get their extra members deleted and missing
   members added in place (gobgpd's AddDefinedSet merges; DeleteDefinedSet without ``all``
   removes the listed members);
2. for export then import: if the assigned ``<prefix><N>`` differs from the wanted policy (or
   its default action differs), add ``<prefix><N+1>``, assign it, unassign the old one, delete
   it with its statements (DeletePolicy needs ``all=True``: without it gobgpd only removes the
   listed statements); with None, unassign and delete ours (and drop the assignment's default
   when no other policy is assigned);
3. defined sets not wanted and not referenced by any policy left are deleted.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from kube_router.bgp import canon, codec
from kube_router.bgp.api import gobgp_pb2 as api
from kube_router.bgp.model import (
    EXPORT_POLICY_PREFIX,
    IMPORT_POLICY_PREFIX,
    Action,
    DefinedSetSpec,
    DefinedType,
    PolicySpec,
    PolicyState,
)


class Calls(Protocol):
    """What policy reconciliation needs of the engine: its unary and streaming calls."""

    async def call(self, request: str, method: str, message: Any) -> Any: ...

    async def collect(self, request: str, method: str, message: Any) -> list[Any]: ...


log = logging.getLogger(__name__)

GLOBAL_ASSIGNMENT: Final = "global"
#: direction → (policy name prefix, default action), as upstream assigns them.
DIRECTIONS: Final = {
    api.EXPORT: (EXPORT_POLICY_PREFIX, Action.REJECT),
    api.IMPORT: (IMPORT_POLICY_PREFIX, Action.ACCEPT),
}
_DIRECTION_NAME: Final = {api.EXPORT: "export", api.IMPORT: "import"}

SetKey = tuple[DefinedType, str]


class PolicySync:
    def __init__(self, engine: Calls) -> None:
        self._engine = engine

    # --- reading -----------------------------------------------------------------------------

    async def read_defined_sets(self) -> dict[SetKey, DefinedSetSpec]:
        sets: dict[SetKey, DefinedSetSpec] = {}
        for kind in DefinedType:
            request = api.ListDefinedSetRequest(defined_type=codec.defined_type_pb(kind))
            for resp in await self._engine.collect("ListDefinedSet", "ListDefinedSet", request):
                spec = codec.defined_set_from_pb(resp.defined_set)
                if spec is not None:
                    sets[(spec.type, spec.name)] = spec
        return sets

    async def list_policies(self) -> list[Any]:
        resps = await self._engine.collect("ListPolicy", "ListPolicy", api.ListPolicyRequest())
        return [r.policy for r in resps]

    async def assignment(self, direction: api.PolicyDirection) -> Any:
        request = api.ListPolicyAssignmentRequest(name=GLOBAL_ASSIGNMENT, direction=direction)
        resps = await self._engine.collect("ListPolicyAssignment", "ListPolicyAssignment", request)
        return resps[0].assignment if resps else None

    async def read_assigned(
        self,
    ) -> tuple[canon.AssignedPolicy | None, canon.AssignedPolicy | None]:
        """Our export and import policies as assigned (the highest version if several)."""
        found: list[canon.AssignedPolicy | None] = []
        for direction, (prefix, _) in DIRECTIONS.items():
            assigned = await self.assignment(direction)
            ours = _ours(assigned, prefix)
            if not ours:
                found.append(None)
                continue
            top = max(ours, key=lambda p: canon.policy_version(p.name, prefix) or 0)
            default = codec.action_of(assigned.default_action)
            found.append(canon.AssignedPolicy(top.name, codec.policy_from_pb(top), default))
        return found[0], found[1]

    # --- syncing -----------------------------------------------------------------------------

    async def sync(self, state: PolicyState) -> None:
        wanted = {(s.type, s.name): canon.canonical_defined_set(s) for s in state.defined_sets}
        await self._add_sets(wanted)
        await self._sync_direction(api.EXPORT, state.export)
        await self._sync_direction(api.IMPORT, state.import_)
        await self._delete_unused_sets(wanted)

    async def _add_sets(self, wanted: dict[SetKey, DefinedSetSpec]) -> None:
        current = await self.read_defined_sets()
        for key, spec in sorted(wanted.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            have = current.get(key)
            if have == spec:
                continue
            if have is None:
                await self._add_set(spec)
                continue
            extra = DefinedSetSpec(
                name=spec.name,
                type=spec.type,
                prefixes=tuple(p for p in have.prefixes if p not in spec.prefixes),
                members=tuple(m for m in have.members if m not in spec.members),
            )
            missing = DefinedSetSpec(
                name=spec.name,
                type=spec.type,
                prefixes=tuple(p for p in spec.prefixes if p not in have.prefixes),
                members=tuple(m for m in spec.members if m not in have.members),
            )
            if extra.prefixes or extra.members:
                await self._delete_set(extra, whole=False)
            if missing.prefixes or missing.members:
                await self._add_set(missing)

    async def _add_set(self, spec: DefinedSetSpec) -> None:
        request = api.AddDefinedSetRequest(defined_set=codec.defined_set_to_pb(spec))
        await self._engine.call(f"AddDefinedSet {spec.name}", "AddDefinedSet", request)

    async def _delete_set(self, spec: DefinedSetSpec, whole: bool) -> None:
        request = api.DeleteDefinedSetRequest(defined_set=codec.defined_set_to_pb(spec), all=whole)
        await self._engine.call(f"DeleteDefinedSet {spec.name}", "DeleteDefinedSet", request)

    async def _delete_unused_sets(self, wanted: dict[SetKey, DefinedSetSpec]) -> None:
        used: set[str] = set()
        for policy in await self.list_policies():
            for stmt in policy.statements:
                used.update({stmt.conditions.prefix_set.name, stmt.conditions.neighbor_set.name})
                used.add(stmt.conditions.community_set.name)
        current = await self.read_defined_sets()
        for key, spec in sorted(current.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            if key not in wanted and spec.name not in used:
                log.info("deleting BGP defined set %s (%s)", spec.name, spec.type.value)
                await self._delete_set(DefinedSetSpec(spec.name, spec.type), whole=True)

    async def _sync_direction(
        self, direction: api.PolicyDirection, wanted: PolicySpec | None
    ) -> None:
        prefix, default = DIRECTIONS[direction]
        assigned = await self.assignment(direction)
        ours = _ours(assigned, prefix)
        existing = [p.name for p in await self.list_policies()]
        keep = ""
        if wanted is not None:
            want = canon.canonical_policy(wanted)
            same_default = assigned is not None and (
                codec.action_of(assigned.default_action) == default
            )
            if len(ours) == 1 and same_default and codec.policy_from_pb(ours[0]) == want:
                keep = ours[0].name
            else:
                versions = [canon.policy_version(n, prefix) or 0 for n in existing]
                keep = f"{prefix}{max(versions, default=0) + 1}"
                await self._install(direction, keep, want, default)
        for old in ours:
            if old.name != keep:
                await self._unassign(direction, old.name, whole=False)
        if wanted is None and ours and len(ours) == len(assigned.policies):
            await self._unassign(direction, "", whole=True)  # back to no default action
        for name in existing:
            if name != keep and canon.policy_version(name, prefix) is not None:
                request = api.DeletePolicyRequest(
                    policy=api.Policy(name=name), preserve_statements=False, all=True
                )
                await self._engine.call(f"DeletePolicy {name}", "DeletePolicy", request)

    async def _install(
        self, direction: api.PolicyDirection, name: str, spec: PolicySpec, default: Action
    ) -> None:
        log.info("installing BGP %s policy %s", _DIRECTION_NAME[direction], name)
        request = api.AddPolicyRequest(policy=codec.policy_to_pb(name, spec))
        await self._engine.call(f"AddPolicy {name}", "AddPolicy", request)
        assignment = api.PolicyAssignment(
            name=GLOBAL_ASSIGNMENT,
            direction=direction,
            policies=[api.Policy(name=name)],
            default_action=codec.action_pb(default),
        )
        await self._engine.call(
            f"AddPolicyAssignment {name}",
            "AddPolicyAssignment",
            api.AddPolicyAssignmentRequest(assignment=assignment),
        )

    async def _unassign(self, direction: api.PolicyDirection, name: str, whole: bool) -> None:
        assignment = api.PolicyAssignment(name=GLOBAL_ASSIGNMENT, direction=direction)
        if name:
            assignment.policies.append(api.Policy(name=name))
        request = api.DeletePolicyAssignmentRequest(assignment=assignment, all=whole)
        what = name or _DIRECTION_NAME[direction]
        await self._engine.call(f"DeletePolicyAssignment {what}", "DeletePolicyAssignment", request)


def _ours(assigned: Any, prefix: str) -> list[Any]:
    if assigned is None:
        return []
    return [p for p in assigned.policies if canon.policy_version(p.name, prefix) is not None]
