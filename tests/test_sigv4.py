"""workers.sigv4: the very signature botocore's SigV4Auth makes, for whatever is signed.

Each case signs one request with botocore first (its own clock), then with ``Signer`` at the
second botocore stamped, and compares the three fields signing adds.
"""

from __future__ import annotations

import calendar
import time
from typing import TypeAlias

import botocore.auth
import botocore.awsrequest
import botocore.credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import sigv4

Keys: TypeAlias = botocore.credentials.ReadOnlyCredentials
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
_VISIBLE = st.characters(min_codepoint=33, max_codepoint=126)
_ADDED = ("X-Amz-Date", "X-Amz-Security-Token", "Authorization")


def botocore_signed(
    url: str, fields: dict[str, str], body: bytes, credentials: Keys, region: str
) -> dict[str, str]:
    request = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=dict(fields))
    botocore.auth.SigV4Auth(credentials, "sqs", region).add_auth(request)
    return dict(request.headers.items())


def ours(
    url: str, fields: dict[str, str], body: bytes, credentials: Keys, region: str, stamp: str
) -> dict[str, str]:
    now = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    return sigv4.Signer(url, region=region, service="sqs").sign(fields, body, credentials, now=now)


def assert_same(
    url: str, fields: dict[str, str], body: bytes, credentials: Keys, region: str = "us-east-1"
) -> None:
    theirs = botocore_signed(url, fields, body, credentials, region)
    mine = ours(url, fields, body, credentials, region, theirs["X-Amz-Date"])
    added = {name: theirs[name] for name in _ADDED if name in theirs}
    assert mine == added


SQS_FIELDS = {
    "X-Amz-Target": "AmazonSQS.ReceiveMessage",
    "Content-Type": "application/x-amz-json-1.0",
    "x-amzn-query-mode": "true",
    "User-Agent": "fanout-worker/1.0 Botocore/1.43",
}
KEYS = Keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
SESSION = Keys("ASIAEXAMPLE", "secret/with+chars", "FwoGZXIvYXdzE//token==")


def test_the_worker_requests_are_signed_as_botocore_signs_them() -> None:
    body = b'{"QueueUrl":"http://127.0.0.1:4566/000000000000/q","MaxNumberOfMessages":10}'
    for url in (
        "https://sqs.us-east-1.amazonaws.com",
        "https://sqs.us-east-1.amazonaws.com:443/",
        "http://127.0.0.1:4566",
        "http://LocalHost:80",
        "http://[::1]:5000",
        "https://sqs-fips.us-gov-west-1.amazonaws.com/some/./path/../gateway",
        "https://user:pw@gateway.example:8443/sqs?b=2&a=1",
    ):
        for credentials in (KEYS, SESSION):
            assert_same(url, SQS_FIELDS, body, credentials)
    assert_same("https://sqs.eu-west-1.amazonaws.com", SQS_FIELDS, b"", SESSION, region="eu-west-1")
    # A value's runs of white space sign as one space, its ends trimmed (SigV4's Trimall).
    assert_same("http://127.0.0.1:4566", {**SQS_FIELDS, "X-Spaced": "  a   b\tc  "}, body, KEYS)


def test_the_signing_key_follows_a_rotated_secret_and_the_day() -> None:
    signer = sigv4.Signer("https://sqs.us-east-1.amazonaws.com", region="us-east-1", service="sqs")
    day = calendar.timegm((2026, 12, 7, 23, 59, 59))
    first = signer.sign(SQS_FIELDS, b"{}", KEYS, now=day)["Authorization"]
    rotated = Keys(KEYS.access_key, "another-secret", None)
    assert signer.sign(SQS_FIELDS, b"{}", rotated, now=day)["Authorization"] != first
    assert signer.sign(SQS_FIELDS, b"{}", KEYS, now=day)["Authorization"] == first
    after_midnight = signer.sign(SQS_FIELDS, b"{}", KEYS, now=day + 1)
    fresh = sigv4.Signer("https://sqs.us-east-1.amazonaws.com", region="us-east-1", service="sqs")
    assert after_midnight == fresh.sign(SQS_FIELDS, b"{}", KEYS, now=day + 1)
    assert "/20261208/us-east-1/sqs/aws4_request" in after_midnight["Authorization"]


field_names = st.text(_TOKEN_CHARS, min_size=1, max_size=12).map(lambda name: f"x-{name}")
field_values = st.lists(st.text(_VISIBLE, min_size=1, max_size=8), min_size=1, max_size=4).flatmap(
    lambda words: st.sampled_from([" ", "  ", "\t", " \t "]).map(lambda gap: f" {gap.join(words)} ")
)
hosts = st.one_of(
    st.sampled_from(["sqs.us-east-1.amazonaws.com", "127.0.0.1", "[::1]", "LOCALHOST", "sqs.example"]),
    st.text(_TOKEN_CHARS, min_size=1, max_size=10).map(lambda label: f"{label}.example.com"),
)
paths = st.lists(st.sampled_from(["a", "b c", ".", "..", "", "~x", "%41", "é"]), max_size=4).map(
    lambda segments: "".join(f"/{segment}" for segment in segments)
)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    hosts,
    st.sampled_from(["", ":80", ":443", ":4566"]),
    paths,
)
credentials = st.builds(
    Keys,
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=20),
    st.text(_VISIBLE, min_size=1, max_size=40),
    st.one_of(st.none(), st.just(""), st.text(_VISIBLE, min_size=1, max_size=60)),
)


@settings(max_examples=300)
@given(
    url=urls,
    extra=st.dictionaries(field_names, field_values, max_size=4),
    body=st.binary(max_size=200),
    keys=credentials,
    region=st.sampled_from(["us-east-1", "eu-central-1", "ap-southeast-2"]),
)
def test_any_request_is_signed_as_botocore_signs_it(
    url: str, extra: dict[str, str], body: bytes, keys: Keys, region: str
) -> None:
    assert_same(url, {**SQS_FIELDS, **extra}, body, keys, region)


def test_the_host_is_the_one_botocore_signs() -> None:
    assert sigv4.canonical_host("https://sqs.us-east-1.amazonaws.com:443/") == "sqs.us-east-1.amazonaws.com"
    assert sigv4.canonical_host("http://User@LocalHost:4566") == "localhost:4566"
    assert sigv4.canonical_host("http://[::1]:80") == "[::1]"
    assert sigv4.canonical_host("https://[::1]:8443") == "[::1]:8443"
