"""Secrets the watcher reads from SSM Parameter Store (SecureStrings): the Slack webhook and the
interactivity signing secret, read once per process (a Lambda container) and never logged."""

from __future__ import annotations

from agent.protocol.errors import ConfigError

_secrets: dict[str, str] = {}  # SSM parameter name -> value, for the process's lifetime


def secret_from_ssm(name: str, endpoint_url: str | None = None, what: str = "Slack webhook") -> str:
    """A secret stored (encrypted) in SSM Parameter Store under `name`, read once per container."""
    if name not in _secrets:
        import boto3
        from botocore.config import Config

        ssm = boto3.client("ssm", endpoint_url=endpoint_url, config=Config(retries={"mode": "standard"}))
        try:
            value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except Exception as exc:  # noqa: BLE001 - missing parameter, no permission: say which
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise ConfigError(f"cannot read the {what} from SSM parameter {name}: {code} "
                              "(aws ssm put-parameter --type SecureString --overwrite ...)") from None
        _secrets[name] = value.strip()
    return _secrets[name]
