"""--disable-source-dest-check: the walk over a fake EC2 client, SigV4 against AWS's published
examples, and the HTTP client against a loopback stand-in for IMDS, STS and EC2 (never AWS)."""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kube_router.controllers.routing.aws import Ec2Error, SourceDestCheck, instance_id
from kube_router.controllers.routing.aws_http import Credentials, HttpEc2Client, sign_v4
from kube_router.k8s import models

EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("provider", "want"),
    [
        ("aws:///us-east-1a/i-0abc123", "i-0abc123"),
        ("aws:///i-0abc123", "i-0abc123"),
        ("aws://us-east-1a/i-0abc123", "i-0abc123"),
        ("aws:///us-east-1a/", "us-east-1a"),
        ("gce://project/zone/name", None),
        ("", None),
        ("aws", None),
    ],
)
def test_instance_id(provider: str, want: str | None) -> None:
    assert instance_id(provider) == want


def node(name: str, provider: str) -> models.Node:
    return models.Node(
        metadata=models.AnnotatedMeta(name=name), spec=models.NodeSpec(provider_id=provider)
    )


class FakeEc2:
    def __init__(self, failures: dict[str, list[str]] | None = None) -> None:
        self.calls: list[str] = []
        self.failures = failures or {}  # instance -> error codes to raise, in turn

    async def region(self) -> str:
        return "eu-west-1"

    async def modify_source_dest_check(self, instance_id: str) -> None:
        self.calls.append(instance_id)
        codes = self.failures.get(instance_id)
        if codes:
            raise Ec2Error(codes.pop(0), "refused")


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


NODES = [
    node("gce", "gce://p/z/n"),  # upstream would stop its walk here
    node("a", "aws:///eu-west-1a/i-a"),
    node("b", "aws:///eu-west-1b/i-b"),
    node("none", ""),
    node("c", "aws:///eu-west-1c/i-c"),
]


def test_walk_disables_each_aws_instance_with_pauses() -> None:
    ec2, sleeps = FakeEc2(), Sleeps()
    check = SourceDestCheck(ec2, sleep=sleeps)
    assert asyncio.run(check.run(NODES)) == ["i-a", "i-b", "i-c"]
    assert ec2.calls == ["i-a", "i-b", "i-c"]
    assert sleeps.slept == [1.0, 1.0]  # between calls, not before the first or after the last


def test_rerun_on_node_add_calls_only_new_instances() -> None:
    ec2 = FakeEc2()
    check = SourceDestCheck(ec2, sleep=Sleeps())
    asyncio.run(check.run(NODES))
    assert asyncio.run(check.run([*NODES, node("d", "aws:///eu-west-1a/i-d")])) == ["i-d"]
    assert ec2.calls == ["i-a", "i-b", "i-c", "i-d"]


def test_unauthorized_stops_for_good() -> None:
    ec2 = FakeEc2({"i-b": ["UnauthorizedOperation"]})
    check = SourceDestCheck(ec2, sleep=Sleeps())
    assert asyncio.run(check.run(NODES)) == ["i-a"]
    assert not check.authorized
    assert asyncio.run(check.run([node("d", "aws:///z/i-d")])) == []
    assert ec2.calls == ["i-a", "i-b"]


def test_other_errors_are_retried_next_run() -> None:
    ec2 = FakeEc2({"i-a": ["InvalidInstanceID.NotFound"]})
    check = SourceDestCheck(ec2, sleep=Sleeps())
    assert asyncio.run(check.run(NODES)) == ["i-b", "i-c"]
    assert check.authorized
    assert asyncio.run(check.run(NODES)) == ["i-a"]


# --- SigV4 ---------------------------------------------------------------------------------


def test_sigv4_get_vanilla_query_order() -> None:
    """AWS's SigV4 test suite, get-vanilla-query-order-key-case."""
    headers = sign_v4(
        "GET",
        "https://example.amazonaws.com/?Param2=value2&Param1=value1",
        {},
        b"",
        Credentials("AKIDEXAMPLE", EXAMPLE_SECRET),
        "us-east-1",
        "service",
        dt.datetime(2015, 8, 30, 12, 36, tzinfo=dt.UTC),
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
    )


def test_sigv4_post_form() -> None:
    """The signed POST of AWS's "signed request examples" (the shape of our EC2 call)."""
    headers = sign_v4(
        "POST",
        "http://iam.amazonaws.com/",
        {"Content-type": "application/x-www-form-urlencoded; charset=utf-8"},
        b"Action=ListUsers&Version=2010-05-08",
        Credentials("AKIDEXAMPLE", EXAMPLE_SECRET),
        "us-east-1",
        "iam",
        dt.datetime(2011, 9, 9, 23, 36, tzinfo=dt.UTC),
    )
    assert headers["x-amz-date"] == "20110909T233600Z"
    assert headers["Authorization"].endswith(
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=ced6826de92d2bdeed8f846f0bf508e8559e98e4b0199114b84c54174deb456c"
    )


def test_credentials_repr_hides_the_secret() -> None:
    assert EXAMPLE_SECRET not in repr(Credentials("AKID", EXAMPLE_SECRET, "tok"))


# --- the HTTP client against a loopback stand-in -----------------------------------------------

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
UNAUTHORIZED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    "<Code>UnauthorizedOperation</Code><Message>You are not authorized</Message>"
    "</Error></Errors><RequestID>x</RequestID></Response>"
)
THROTTLED_XML = UNAUTHORIZED_XML.replace("UnauthorizedOperation", "RequestLimitExceeded")
STS_XML = (
    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
    "<AccessKeyId>ASIAWEB</AccessKeyId><SecretAccessKey>websecret</SecretAccessKey>"
    "<SessionToken>webtoken</SessionToken><Expiration>2030-01-02T04:04:05Z</Expiration>"
    "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
)


class StandIn:
    """IMDSv2, STS and EC2 on one loopback server, recording what they were asked."""

    def __init__(self) -> None:
        self.ec2_answers: list[tuple[int, str]] = []
        self.ec2_requests: list[tuple[Any, dict[str, str]]] = []
        self.sts_forms: list[dict[str, str]] = []
        self.token = "imds-token"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self.imds_token)
        app.router.add_get("/latest/meta-data/{path:.*}", self.imds)
        app.router.add_post("/ec2/", self.ec2)
        app.router.add_post("/sts/", self.sts)
        return app

    async def imds_token(self, request: web.Request) -> web.Response:
        assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        return web.Response(text=self.token)

    async def imds(self, request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") != self.token:
            return web.Response(status=401)
        answers = {
            "placement/region": "eu-west-1",
            "iam/security-credentials/": "node-role\n",
            "iam/security-credentials/node-role": (
                '{"Code": "Success", "AccessKeyId": "ASIAROLE", "SecretAccessKey": "s",'
                ' "Token": "roletoken", "Expiration": "2030-01-02T09:00:00Z"}'
            ),
        }
        path = request.match_info["path"]
        return web.Response(text=answers[path]) if path in answers else web.Response(status=404)

    async def ec2(self, request: web.Request) -> web.Response:
        form = dict(urllib.parse.parse_qsl(await request.text()))
        self.ec2_requests.append((request.headers.copy(), form))  # case-insensitive
        status, text = self.ec2_answers.pop(0) if self.ec2_answers else (200, "<ok/>")
        return web.Response(status=status, text=text)

    async def sts(self, request: web.Request) -> web.Response:
        self.sts_forms.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.Response(text=STS_XML)


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, str]]:
    s = StandIn()
    runner = web.AppRunner(s.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield s, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client(base: str, env: dict[str, str], slept: list[float] | None = None) -> HttpEc2Client:
    async def sleep(seconds: float) -> None:
        (slept if slept is not None else []).append(seconds)

    return HttpEc2Client(
        env=env,
        imds_endpoint=base,
        ec2_endpoint=f"{base}/ec2/",
        sts_endpoint=f"{base}/sts/",
        clock=lambda: NOW,
        sleep=sleep,
    )


async def test_call_with_instance_role(stand_in: tuple[StandIn, str]) -> None:
    s, base = stand_in
    c = client(base, {})
    try:
        assert await c.region() == "eu-west-1"
        await c.modify_source_dest_check("i-0abc")
    finally:
        await c.close()
    headers, form = s.ec2_requests[0]
    assert form == {
        "Action": "ModifyInstanceAttribute",
        "Version": "2016-11-15",
        "InstanceId": "i-0abc",
        "SourceDestCheck.Value": "false",
    }
    assert headers["X-Amz-Security-Token"] == "roletoken"
    assert headers["X-Amz-Date"] == "20300102T030405Z"
    auth = headers["Authorization"]
    assert auth.startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAROLE/20300102/eu-west-1/ec2/aws4_request"
    )
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token" in auth


async def test_env_credentials_and_unauthorized(stand_in: tuple[StandIn, str]) -> None:
    s, base = stand_in
    s.ec2_answers = [(403, UNAUTHORIZED_XML)]
    c = client(base, {"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "x"})
    try:
        with pytest.raises(Ec2Error) as caught:
            await c.modify_source_dest_check("i-0abc")
    finally:
        await c.close()
    assert (caught.value.code, caught.value.status) == ("UnauthorizedOperation", 403)
    assert len(s.ec2_requests) == 1  # not retried
    assert "Credential=AKIDENV/" in s.ec2_requests[0][0]["Authorization"]
    assert "X-Amz-Security-Token" not in s.ec2_requests[0][0]


async def test_throttling_and_server_errors_are_retried(stand_in: tuple[StandIn, str]) -> None:
    s, base = stand_in
    s.ec2_answers = [(503, THROTTLED_XML), (500, "oops")]
    slept: list[float] = []
    c = client(base, {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "x"}, slept)
    try:
        await c.modify_source_dest_check("i-0abc")
    finally:
        await c.close()
    assert len(s.ec2_requests) == 3 and slept == [0.5, 1.0]


async def test_web_identity(stand_in: tuple[StandIn, str], tmp_path: Path) -> None:
    s, base = stand_in
    token = tmp_path / "token"
    token.write_text("jwt-from-kubelet\n")
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": "arn:aws:iam::1:role/kr"}
    c = client(base, env)
    try:
        await c.modify_source_dest_check("i-0abc")
    finally:
        await c.close()
    assert s.sts_forms[0]["WebIdentityToken"] == "jwt-from-kubelet"
    assert s.sts_forms[0]["RoleArn"] == "arn:aws:iam::1:role/kr"
    assert s.ec2_requests[0][0]["X-Amz-Security-Token"] == "webtoken"


async def test_nothing_listening_is_an_ec2_error() -> None:
    c = client("http://127.0.0.1:9", {})  # discard port: refused
    try:
        with pytest.raises(Ec2Error) as caught:
            await c.region()
    finally:
        await c.close()
    assert caught.value.code == "RequestError"


def test_any_failure_code_reaches_the_walk(monkeypatch: Any) -> None:
    async def boom(self: Any, instance_id: str) -> None:
        raise Ec2Error("RequestError", "no route")

    monkeypatch.setattr(FakeEc2, "modify_source_dest_check", boom)
    check = SourceDestCheck(FakeEc2(), sleep=Sleeps())
    assert asyncio.run(check.run(NODES)) == [] and check.authorized
