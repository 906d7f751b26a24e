"""The one place that turns a botocore error into one line with the setting to change.

Every command that talks to AWS (the stores, EC2, the watcher, the agent) ends up here, so a
missing credential or a typo in a bucket reads the same everywhere. `explain()` never imports
botocore: it recognises botocore's exceptions by their class name and module, so `ctl --help`
stays fast and the Lambda's imports stay small.

`permanent()` separates a store that cannot work (no such bucket, access denied, bad
credentials, wrong region) from one that is briefly away (connection refused, 5xx, throttling,
timeouts): the agent refuses a run for the first and rides out the second with its spool.
"""

from __future__ import annotations

_CREDENTIALS_MISSING = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                        "NoAuthTokenError", "ProfileNotFound", "ConfigNotFound"}
_CREDENTIALS_EXPIRED = {"SSOTokenLoadError", "UnauthorizedSSOTokenError", "TokenRetrievalError",
                        "SSOError", "PendingAuthorizationExpiredError"}
_BAD_CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId",
                         "UnrecognizedClientException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                         "AuthFailure", "InvalidToken", "TokenRefreshRequired"}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden", "403",
                 "AllAccessDisabled", "AuthorizationError"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                 "301", "InvalidRegion"}
_THROTTLE_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded",
                   "TooManyRequestsException", "RequestThrottled", "429", "503", "ServiceUnavailable",
                   "InternalError", "500", "502", "504", "RequestTimeout", "RequestTimeoutException"}
_TRANSIENT_CLASSES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                      "ConnectionError", "HTTPClientError", "ProxyConnectionError", "ResponseStreamingError",
                      "IncompleteReadError"}

CREDENTIALS_FIX = ("run `aws configure`, set AWS_PROFILE to a profile that has keys, or `aws sso login` "
                   "(--profile NAME) when the SSO session expired")
STORE_FIX = "check --store / TRAINCTL_STORE / store.url in run.toml"


def is_botocore(exc: BaseException) -> bool:
    """True for botocore's and boto3's own exceptions (ClientError, NoCredentialsError, ...)."""
    return any(c.__module__.split(".")[0] in ("botocore", "boto3") for c in type(exc).__mro__)


def _code(exc) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "") or resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _actual_region(exc) -> str | None:
    resp = getattr(exc, "response", None) or {}
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return headers.get("x-amz-bucket-region") or resp.get("Error", {}).get("Region") or None


def kind(exc: BaseException) -> str | None:
    """credentials, denied, not_found, region, transient, or None when this is no AWS error we know."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & (_CREDENTIALS_MISSING | _CREDENTIALS_EXPIRED):
        return "credentials"
    if names & _TRANSIENT_CLASSES:
        return "transient"
    code = _code(exc)
    if code in _BAD_CREDENTIAL_CODES:
        return "credentials"
    if code in _DENIED_CODES:
        return "denied"
    if code in _REGION_CODES:
        return "region"
    if code in _THROTTLE_CODES:
        return "transient"
    if code == "NoSuchBucket" or code.endswith(".NotFound") or code.endswith(".Malformed"):
        return "not_found"
    return None


def permanent(exc: BaseException) -> bool:
    """A failure retrying cannot fix (credentials, access, a missing bucket, the wrong region)."""
    return kind(exc) in ("credentials", "denied", "not_found", "region")


def explain(exc: BaseException, *, region: str | None = None, fix_resource: str = STORE_FIX) -> str | None:
    """`<code>: <why>: <the setting to change>`, or None for an error this module does not know.

    Callers put what they were doing in front (`S3 list s3://b/p/ failed: ...`); `fix_resource`
    says where the user names the resource (the store URL by default).
    """
    k = kind(exc)
    if k is None:
        return None
    label = _code(exc) or type(exc).__name__
    where = f" in {region}" if region else ""
    if k == "credentials":
        names = {c.__name__ for c in type(exc).__mro__}
        if "ProfileNotFound" in names:
            return f"{label}: {exc}: set AWS_PROFILE (or --profile) to a profile in ~/.aws/config, or unset it"
        why = ("the AWS credentials expired or were refused" if names & _CREDENTIALS_EXPIRED
               or _code(exc) in _BAD_CREDENTIAL_CODES else "no AWS credentials found")
        return f"{label}: {why}: {CREDENTIALS_FIX}"
    if k == "denied":
        return (f"{label}: this AWS identity may not do that{where}: grant the action on the resource in its IAM "
                f"policy (or instance profile), or use a profile that has it; {fix_resource}")
    if k == "not_found":
        what = "the bucket does not exist" if label == "NoSuchBucket" else "it does not exist"
        return f"{label}: {what}{where}: {fix_resource}, or the region (--store-region / --region, AWS_REGION)"
    if k == "region":
        actual = _actual_region(exc)
        hint = f"it lives in {actual}; " if actual else ""
        return (f"{label}: wrong region{where}: {hint}pass --store-region / --region (or AWS_REGION) "
                f"for the region it lives in")
    return (f"{label}: AWS is unreachable or throttling{where}: retry in a minute; check the network and "
            f"--endpoint-url when it persists")


def one_line(exc: BaseException, *, region: str | None = None, fix_resource: str = STORE_FIX) -> str:
    """explain(), or for a botocore error it does not know its code and first line (never a traceback)."""
    line = explain(exc, region=region, fix_resource=fix_resource)
    if line is None:
        first = str(exc).splitlines()[0] if str(exc) else ""
        line = f"{_code(exc) or type(exc).__name__}: {first}"
    return line
