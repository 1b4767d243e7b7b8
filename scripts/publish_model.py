"""Publish a packaged model (a posterior file and its manifest, as package_model.py writes them) as the next version
of a named model in the API's registry, through the client's publish(): the version asked for, the file uploaded to
its presigned URL, checked by the service; then, with --promote, an alias pointed at it.

    python scripts/publish_model.py MODEL.npz --name NAME [--url URL] [--admin-key KEY] [--promote [--alias live]]
        [--reason TEXT]

URL defaults to $GPR_SURROGATE_URL, else the local server (`make serve`, http://127.0.0.1:3000); the admin key to
$GPR_SURROGATE_ADMIN_KEY (none: the local server lets anyone write). Prints the version's record (JSON) and, with
--promote, the alias's. Exit status 1 when the service refused (the reason printed: a FAILED check, a 403 without the
admin permission), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
from gpr_client import ApiError, PublishFailedError, SurrogateClient
from gpr_client.client import ADMIN_KEY_VARIABLE, URL_VARIABLE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # handler, run as a script
from handler.registry.names import BadNameError, check_alias, check_model_name

LOCAL_URL = "http://127.0.0.1:3000"


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("model", type=Path, help="the posterior file (.npz); its manifest beside it")
    parse.add_argument("--name", required=True, help="the model's name in the registry")
    parse.add_argument("--url", default=os.environ.get(URL_VARIABLE) or LOCAL_URL, help=f"default ${URL_VARIABLE}")
    parse.add_argument("--admin-key", default=None, help=f"the admin API key (default ${ADMIN_KEY_VARIABLE})")
    parse.add_argument("--promote", action="store_true", help="point --alias at the new version once it is READY")
    parse.add_argument("--alias", default="live", help="the alias --promote moves (default live)")
    parse.add_argument("--reason", default=None, help="why, recorded in the alias's history with --promote")
    return parse


def publish(args: argparse.Namespace, client: SurrogateClient) -> int:
    """Publish (and promote) with `client`; the exit status."""
    try:
        record = client.publish(args.model, args.name)
        print(json.dumps(record, indent=2))
        if args.promote:
            alias = client.promote(args.name, int(record["version"]), args.alias, reason=args.reason)
            print(json.dumps(alias, indent=2))
    except PublishFailedError as failed:
        print(f"publish-model: {failed}", file=sys.stderr)
        return 1
    except ApiError as refused:
        print(f"publish-model: the service refused: {refused}", file=sys.stderr)
        return 1
    except httpx.TransportError as unreachable:
        print(f"publish-model: could not reach {args.url} ({unreachable}); is `make serve` running?", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.model.is_file():
        print(f"publish-model: no file {args.model}", file=sys.stderr)
        return 2
    for check, value, option in ((check_model_name, args.name, "--name"), (check_alias, args.alias, "--alias")):
        try:  # before anything is published: a version is never made for a promotion that cannot happen
            check(value)
        except BadNameError as wrong:
            print(f"publish-model: {option} {value!r}: {wrong}", file=sys.stderr)
            return 2
    try:
        with SurrogateClient(args.url, admin_key=args.admin_key, max_attempts=3) as client:
            return publish(args, client)
    except FileNotFoundError as missing:  # no manifest beside the model
        print(f"publish-model: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
