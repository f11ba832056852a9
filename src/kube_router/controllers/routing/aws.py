"""``--disable-source-dest-check``: turn off EC2's source/destination check on AWS nodes
(reference §4.2 step 3).

EC2 drops packets whose source or destination is not the instance's own address, which is
exactly what pod traffic between nodes is. For every Node whose ``spec.providerID`` starts with
``aws`` (``aws:///<zone>/<instance id>``) :class:`SourceDestCheck` asks EC2 for
``ModifyInstanceAttribute SourceDestCheck=false``, pausing 1 s between calls (EC2 throttles).
After an ``UnauthorizedOperation`` (the node's IAM role lacks ``ec2:ModifyInstanceAttribute``)
it stops for good: :attr:`SourceDestCheck.authorized` turns False and later runs do nothing.
The controller calls :meth:`SourceDestCheck.run` once at start with all Nodes and again on every
Node add or delete.

Differences from upstream: a non-AWS node is skipped (upstream stops the whole walk at the first
one, so the result hangs on list order); an instance already done is not asked again (upstream
calls EC2 for every node on every node event); a provider ID without a zone
(``aws:///i-0abc``) still yields its instance ID.

:class:`Ec2Client` is the port. :class:`~.aws_http.HttpEc2Client` is the real one (HTTPS with
SigV4 signing, region and credentials from the instance metadata service); tests use a fake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from kube_router.k8s import models

log = logging.getLogger(__name__)

AWS_PROVIDER_PREFIX: Final = "aws"
THROTTLE_PAUSE_S: Final = 1.0
UNAUTHORIZED: Final = "UnauthorizedOperation"

__all__ = [
    "UNAUTHORIZED",
    "Ec2Client",
    "Ec2Error",
    "SourceDestCheck",
    "instance_id",
]


class Ec2Error(Exception):
    """EC2 (or the way to it) refused a call: ``code`` is the API error code when there is one
    (``UnauthorizedOperation``, ``InvalidInstanceID.NotFound``, ...), else a short reason."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status  # the HTTP status, when there was an answer


class Ec2Client(Protocol):
    """What the source/destination check needs of EC2."""

    async def region(self) -> str:
        """The region this node runs in (the instance metadata service's answer)."""
        ...

    async def modify_source_dest_check(self, instance_id: str) -> None:
        """``ModifyInstanceAttribute InstanceId=... SourceDestCheck.Value=false``; Ec2Error."""
        ...


def instance_id(provider_id: str) -> str | None:
    """``i-0abc`` from ``aws:///us-east-1a/i-0abc`` (or ``aws:///i-0abc``); None when the node is
    not on AWS or names no instance."""
    if not provider_id.startswith(AWS_PROVIDER_PREFIX):
        return None
    _, sep, rest = provider_id.partition("://")
    if not sep:
        return None
    last = rest.strip("/").rsplit("/", 1)[-1]
    return last or None


class SourceDestCheck:
    """Disables the check on every AWS node, once per instance, until EC2 says unauthorized."""

    def __init__(
        self,
        client: Ec2Client,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pause: float = THROTTLE_PAUSE_S,
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.pause = pause
        self.authorized = True
        self.done: set[str] = set()
        self._lock = asyncio.Lock()

    async def run(self, nodes: Iterable[models.Node]) -> list[str]:
        """One walk over ``nodes``; the instance IDs whose check was disabled by it.

        Errors other than UnauthorizedOperation are logged and the walk goes on; the instance is
        tried again on the next run."""
        async with self._lock:
            disabled: list[str] = []
            first = True
            for node in nodes:
                if not self.authorized:
                    break
                wanted = instance_id(node.spec.provider_id)
                if wanted is None or wanted in self.done:
                    continue
                if not first:
                    await self.sleep(self.pause)  # EC2 throttles bursts of calls
                first = False
                if await self._disable(node.metadata.name, wanted):
                    disabled.append(wanted)
            return disabled

    async def _disable(self, node: str, wanted: str) -> bool:
        try:
            await self.client.modify_source_dest_check(wanted)
        except Ec2Error as err:
            if err.code == UNAUTHORIZED:
                self.authorized = False
                log.error(
                    "node %s: no IAM permission to modify instance attributes, so the "
                    "source/destination check stays on (not retried): %s",
                    node,
                    err.message,
                )
            else:
                log.error(
                    "node %s: disabling the source/destination check of %s failed: %s",
                    node,
                    wanted,
                    err,
                )
            return False
        self.done.add(wanted)
        log.info("disabled the source/destination check of instance %s (node %s)", wanted, node)
        return True
