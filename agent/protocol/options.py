"""Where a command finds the run store: the options every part's CLI declares from here, once."""

from __future__ import annotations

import click

_STORE_OPTIONS = (
    click.option("--store", "store_url", envvar="TRAINCTL_STORE", default=None, metavar="URL",
                 help="Run store: s3://bucket/prefix, file:///path or a folder (env TRAINCTL_STORE; "
                      "default ~/.trainctl/runs)."),
    click.option("--endpoint-url", envvar="TRAINCTL_S3_ENDPOINT", default=None, metavar="URL",
                 help="S3 endpoint for S3-compatible stores (env TRAINCTL_S3_ENDPOINT)."),
    click.option("--store-region", "store_region", envvar="TRAINCTL_S3_REGION", default=None, metavar="REGION",
                 help="Region of the store's bucket (env TRAINCTL_S3_REGION; default: the AWS settings')."),
)


def store_options(fn):
    """--store, --endpoint-url and --store-region: where a command finds the run store (declared once)."""
    for option in reversed(_STORE_OPTIONS):
        fn = option(fn)
    return fn


def open_run_store(store_url: str | None, endpoint_url: str | None = None, region: str | None = None):
    """The RunStore a command's store options name."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.stores import open_store

    return RunStore(open_store(store_url, endpoint_url=endpoint_url, region=region))
