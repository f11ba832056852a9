"""The real :class:`~.aws.Ec2Client`: EC2's Query API over HTTPS, signed with SigV4.

- Region: the instance metadata service, IMDSv2 (``PUT /latest/api/token``, then
  ``GET /latest/meta-data/placement/region`` with the token), as upstream does.
- Credentials, first found: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (``AWS_SESSION_TOKEN``); a web identity (IRSA: ``AWS_WEB_IDENTITY_TOKEN_FILE`` and
  ``AWS_ROLE_ARN``, exchanged with STS ``AssumeRoleWithWebIdentity``); the instance role from
  IMDS (``/latest/meta-data/iam/security-credentials/<role>``). Temporary credentials are
  refreshed a few minutes before they expire. Not supported: shared config/credentials files
  and container credential endpoints (EKS Pod Identity, ECS).
- The call: ``POST https://ec2.<region>.amazonaws.com/`` with
  ``Action=ModifyInstanceAttribute&InstanceId=...&SourceDestCheck.Value=false``; an error
  response's ``<Code>`` becomes :class:`~.aws.Ec2Error`'s code. Throttling and server errors
  are retried up to :data:`MAX_ATTEMPTS` times in all (the SDK's default retryer, as upstream).

Signing uses only the standard library (``hmac``, ``hashlib``); HTTP is aiohttp, already the
agent's HTTP library. Endpoints are constructor arguments so tests point them at a loopback
server; nothing here is ever run against AWS in tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from kube_router.controllers.routing.aws import Ec2Error

IMDS_ENDPOINT: Final = "http://169.254.169.254"
IMDS_TOKEN_TTL_S: Final = 21600
EC2_API_VERSION: Final = "2016-11-15"
STS_API_VERSION: Final = "2011-06-15"
SERVICE_EC2: Final = "ec2"
SERVICE_STS: Final = "sts"
ALGORITHM: Final = "AWS4-HMAC-SHA256"
FORM: Final = "application/x-www-form-urlencoded; charset=utf-8"
REQUEST_TIMEOUT_S: Final = 10.0
MAX_ATTEMPTS: Final = 5
RETRY_BASE_S: Final = 0.5
REFRESH_MARGIN: Final = dt.timedelta(minutes=5)
HTTP_SERVER_ERROR: Final = 500
REQUEST_ERROR: Final = "RequestError"  # no answer: connection refused, timeout
THROTTLING_CODES: Final = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled"}
)
_CODE: Final = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE: Final = re.compile(r"<Message>([^<]*)</Message>")

__all__ = ["Credentials", "HttpEc2Client", "sign_v4"]


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str  # never logged: see __repr__
    token: str | None = None
    expires: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, expires={self.expires})"

    def fresh(self, now: dt.datetime) -> bool:
        return self.expires is None or now + REFRESH_MARGIN < self.expires


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def sign_v4(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    creds: Credentials,
    region: str,
    service: str,
    now: dt.datetime,
) -> dict[str, str]:
    """``headers`` plus ``x-amz-date``, ``x-amz-security-token`` (with a session token) and
    ``Authorization``, as SigV4 asks (every header given is signed; ``host`` is added)."""
    parts = urllib.parse.urlsplit(url)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    out = dict(headers)
    out.setdefault("host", parts.netloc)
    out["x-amz-date"] = stamp
    if creds.token:
        out["x-amz-security-token"] = creds.token
    canon = {k.lower(): " ".join(v.split()) for k, v in out.items()}
    names = sorted(canon)
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    request = "\n".join(
        [
            method,
            _quote_path(parts.path or "/"),
            "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query),
            "".join(f"{n}:{canon[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(f"AWS4{creds.secret_key}".encode(), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


def _quote_path(path: str) -> str:
    return urllib.parse.quote(path, safe="/-_.~")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _error_of(status: int, text: str) -> Ec2Error:
    code, message = _CODE.search(text), _MESSAGE.search(text)
    return Ec2Error(
        code.group(1) if code else f"HTTP{status}",
        message.group(1) if message else text[:200],
        status,
    )


class HttpEc2Client:
    """EC2 over HTTPS; see the module docstring. ``close()`` when done."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        imds_endpoint: str = IMDS_ENDPOINT,
        ec2_endpoint: str | None = None,
        sts_endpoint: str | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.imds_endpoint = imds_endpoint.rstrip("/")
        self.ec2_endpoint = ec2_endpoint
        self.sts_endpoint = sts_endpoint
        self.clock = clock
        self.sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._region: str | None = None
        self._creds: Credentials | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, method: str, url: str, **kw: Any) -> tuple[int, str]:
        try:
            async with self._http().request(method, url, **kw) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Ec2Error(REQUEST_ERROR, f"{method} {url}: {err or type(err).__name__}") from err

    # --- instance metadata ------------------------------------------------------------------

    async def _imds(self, path: str) -> str:
        status, token = await self._fetch(
            "PUT",
            f"{self.imds_endpoint}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_S)},
        )
        if status != 200:
            raise Ec2Error("IMDSError", f"token request: HTTP {status}")
        status, text = await self._fetch(
            "GET",
            f"{self.imds_endpoint}/latest/{path}",
            headers={"X-aws-ec2-metadata-token": token},
        )
        if status != 200:
            raise Ec2Error("IMDSError", f"{path}: HTTP {status}")
        return text.strip()

    async def region(self) -> str:
        if self._region is None:
            self._region = await self._imds("meta-data/placement/region")
        return self._region

    # --- credentials ------------------------------------------------------------------------

    async def credentials(self) -> Credentials:
        if self._creds is None or not self._creds.fresh(self.clock()):
            self._creds = await self._load_credentials()
        return self._creds

    async def _load_credentials(self) -> Credentials:
        key, secret = self.env.get("AWS_ACCESS_KEY_ID"), self.env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return Credentials(key, secret, self.env.get("AWS_SESSION_TOKEN") or None)
        token_file, role = self.env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), self.env.get("AWS_ROLE_ARN")
        if token_file and role:
            return await self._web_identity(Path(token_file), role)
        role_name = (await self._imds("meta-data/iam/security-credentials/")).splitlines()
        if not role_name:
            raise Ec2Error("NoCredentials", "no environment credentials and no instance role")
        doc = json.loads(await self._imds(f"meta-data/iam/security-credentials/{role_name[0]}"))
        return Credentials(
            doc["AccessKeyId"],
            doc["SecretAccessKey"],
            doc.get("Token"),
            dt.datetime.fromisoformat(doc["Expiration"].replace("Z", "+00:00")),
        )

    async def _web_identity(self, token_file: Path, role: str) -> Credentials:
        try:
            token = token_file.read_text().strip()
        except OSError as err:
            raise Ec2Error("NoCredentials", f"reading {token_file}: {err.strerror}") from err
        region = await self.region()
        url = self.sts_endpoint or f"https://sts.{region}.amazonaws.com/"
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": STS_API_VERSION,
            "RoleArn": role,
            "RoleSessionName": self.env.get("AWS_ROLE_SESSION_NAME") or "kube-router",
            "WebIdentityToken": token,
        }
        status, text = await self._fetch("POST", url, data=form, headers={"Content-Type": FORM})
        if status != 200:
            raise _error_of(status, text)
        fields = {
            name: re.search(f"<{name}>([^<]+)</{name}>", text)
            for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
        }
        if any(m is None for m in fields.values()):
            raise Ec2Error("NoCredentials", "STS answer without credentials")
        got = {k: m.group(1) for k, m in fields.items() if m is not None}
        expires = dt.datetime.fromisoformat(got["Expiration"].replace("Z", "+00:00"))
        return Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"], expires)

    # --- EC2 --------------------------------------------------------------------------------

    async def modify_source_dest_check(self, instance_id: str) -> None:
        form = {
            "Action": "ModifyInstanceAttribute",
            "Version": EC2_API_VERSION,
            "InstanceId": instance_id,
            "SourceDestCheck.Value": "false",
        }
        body = urllib.parse.urlencode(form).encode()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await self._ec2_call(body)
                return
            except Ec2Error as err:
                server = err.status is not None and err.status >= HTTP_SERVER_ERROR
                retry = server or err.code in THROTTLING_CODES or err.code == REQUEST_ERROR
                if not retry or attempt == MAX_ATTEMPTS:
                    raise
                await self.sleep(RETRY_BASE_S * 2 ** (attempt - 1))

    async def _ec2_call(self, body: bytes) -> None:
        region = await self.region()
        url = self.ec2_endpoint or f"https://ec2.{region}.amazonaws.com/"
        creds = await self.credentials()
        headers = sign_v4(
            "POST", url, {"Content-Type": FORM}, body, creds, region, SERVICE_EC2, self.clock()
        )
        status, text = await self._fetch("POST", url, data=body, headers=headers)
        if status != 200:
            raise _error_of(status, text)
