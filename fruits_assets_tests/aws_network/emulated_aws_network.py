"""The network of a machine in eu-west-1, for boto3, in the EMR emulation's processes (the Dagster
host, the step's driver, the executors' Python workers): AWS's regional eu-west-1 endpoints reach
the moto server; any other AWS endpoint is unreachable.

botocore loads this module into every client it makes when the process has this folder on its
PYTHONPATH and `BOTOCORE_EXPERIMENTAL__PLUGINS=emulated_aws_network=emulated_aws_network`
(botocore's client plugins, `botocore/plugin.py`: private and experimental, hence the pinned
botocore of both environments; if botocore drops it, requests go to AWS itself and fail here,
unreachable; they never silently pass). Nothing else changes: a client resolves, builds and signs its request for
AWS as it would on AWS; only where the request is sent changes, as a DNS entry would: to the moto
server at $EMULATED_AWS_ENDPOINT, with the AWS host name kept in the Host header (moto reads
virtual-hosted bucket names and services from it).

Unlike AWS_ENDPOINT_URL, which makes a client reach the server whatever region it was made for,
a client made without a region (us-east-1 for S3's global endpoint, or NoRegionError) fails here
with botocore's own EndpointConnectionError, as on a network that reaches only eu-west-1's
endpoints (e.g. a private subnet with eu-west-1 VPC endpoints). On the open internet such a
client may still work, slower, through S3's redirects.

Requests to a non-AWS endpoint (a client given `endpoint_url`) are left alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENDPOINT_VARIABLE = "EMULATED_AWS_ENDPOINT"
PLUGIN = "emulated_aws_network=emulated_aws_network"  # BOTOCORE_EXPERIMENTAL__PLUGINS's value
REGION = "eu-west-1"
# s3.eu-west-1.amazonaws.com, <bucket>.s3.eu-west-1.amazonaws.com,
# elasticmapreduce.eu-west-1.amazonaws.com, kms.eu-west-1.amazonaws.com, sts.eu-west-1...
REGIONAL_HOST = re.compile(rf"^([a-z0-9.-]+\.)?{re.escape(REGION)}\.amazonaws\.com$")
AWS_HOST = re.compile(r"(^|\.)(amazonaws\.com|amazonaws\.com\.cn|api\.aws)$")
FOLDER = Path(__file__).resolve().parent  # what goes on the PYTHONPATH


def environment(endpoint: str, pythonpath: tuple[str, ...] = ()) -> dict[str, str]:
    """The variables that give a process this network, the moto server at `endpoint` standing in
    for eu-west-1 (`pythonpath`: the process's own entries, before this folder)."""
    return {
        "PYTHONPATH": os.pathsep.join([*pythonpath, str(FOLDER)]),
        "BOTOCORE_EXPERIMENTAL__PLUGINS": PLUGIN,
        ENDPOINT_VARIABLE: endpoint,
    }


def initialize_client_plugin(client) -> None:
    """botocore's hook: called for every client made in the process."""
    client.meta.events.register("before-send", route)


def route(request, **_) -> None:
    """Send a request for eu-west-1's endpoints to the moto server; refuse other AWS hosts."""
    from botocore.exceptions import EndpointConnectionError

    url = urlsplit(request.url)
    host = url.hostname or ""
    if not AWS_HOST.search(host):
        return None
    if not REGIONAL_HOST.match(host):
        raise EndpointConnectionError(
            endpoint_url=request.url,
            error=f"this network reaches only AWS's {REGION} endpoints (a client made without the region?)",
        )
    target = urlsplit(os.environ[ENDPOINT_VARIABLE])
    request.headers["Host"] = url.netloc
    request.url = urlunsplit((target.scheme, target.netloc, url.path, url.query, url.fragment))
    return None
