from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from config.redact import masked_url
from notify import crypto, services
from notify.models import Client, SecretKey


class Command(BaseCommand):
    help = "Create a client and print its secret key (the last line of output)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--bridge-url", required=True, help="The client's bridge endpoint.")
        parser.add_argument(
            "--allowed-bridge-url",
            action="append",
            default=[],
            help="Another bridge URL (repeatable).",
        )
        parser.add_argument(
            "--email-from",
            default="",
            help="The From of the client's emails when a step sets none, as "
            "'Acme <hello@acme.example>' (default: DEFAULT_FROM_EMAIL).",
        )
        parser.add_argument(
            "--email-from-domain",
            action="append",
            default=[],
            help="A domain a step's from.email may use (repeatable; exact, a subdomain is "
            "listed on its own). None: any domain.",
        )
        parser.add_argument(
            "--secret-key",
            help="Use this secret key instead of generating one (e.g. to match a bridge's NOVU_SECRET_KEY).",
        )
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="Do nothing but print the name when the client exists (with --secret-key: also "
            "add that key if the client lacks it).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._create(options)
        except ValueError as exc:  # a name, bridge URL, sender policy or short key refused
            raise CommandError(str(exc)) from exc

    def _create(self, options: dict[str, Any]) -> None:
        key = (options["secret_key"] or "").strip()  # as secret_key_create stores it
        # Trimmed, as client_create stores it: " shop" found no "shop", whose name the
        # new one then took (an IntegrityError, a traceback), or passed --if-missing.
        name: str = options["name"].strip()
        existing = Client.objects.filter(name=name).first()
        if existing is not None and not options["if_missing"]:
            raise CommandError(f"a client named {name!r} exists already")
        found = SecretKey.objects.filter(key_hash=crypto.hash_key(key)).first() if key else None
        if found is not None and (
            existing is None or found.client_id != existing.pk or found.revoked_at
        ):
            # Its hash is taken: adding it again would break the unique constraint.
            raise CommandError("that secret key is revoked, or belongs to another client")
        if existing is not None:
            if key and found is None:
                services.secret_key_create(client=existing, key=key)
            self.stdout.write(f"Client {name!r} exists already.")
            if (given := options["bridge_url"].strip()) != existing.bridge_url:
                # A deploy script's new --bridge-url was left unapplied without a word, and
                # every trigger went on calling the old bridge.
                self.stderr.write(
                    f"Its bridge is {masked_url(existing.bridge_url)}, not the --bridge-url "
                    f"given ({masked_url(given)}): --if-missing changes no client; change it "
                    "on the client's admin page, keeping the old URL among its allowed bridge "
                    "URLs until the notifications under way are done."
                )
            if key:
                self.stdout.write(key)
            return
        with transaction.atomic():
            client = services.client_create(
                name=name,
                bridge_url=options["bridge_url"],
                allowed_bridge_urls=options["allowed_bridge_url"],
                email_from=options["email_from"],
                email_from_domains=options["email_from_domain"],
            )
            _, key = services.secret_key_create(client=client, key=key)
        self.stdout.write(
            f"Created client {name!r} (id {client.pk}), bridge {masked_url(client.bridge_url)}."
        )
        self.stdout.write("Its secret key follows; it is shown only now:")
        self.stdout.write(key)
