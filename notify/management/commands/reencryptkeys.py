from __future__ import annotations

from typing import Any

from cryptography.fernet import InvalidToken
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from notify import crypto
from notify.models import SecretKey


class Command(BaseCommand):
    help = (
        "Encrypt every stored secret key again with the first key of NORM_ENCRYPTION_KEY. "
        "To rotate it: set NORM_ENCRYPTION_KEY=new,old everywhere, run this, then drop old."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            # Only the keys locked: with select_related, PostgreSQL's FOR UPDATE locks the
            # joined client rows too, and every insert that references a client (a
            # trigger's event, a subscriber) waited on its foreign key for the whole run.
            secrets = list(
                SecretKey.objects.select_for_update(of=("self",))
                .select_related("client")
                .only("pk", "prefix", "encrypted", "revoked_at", "client__name")
            )
            done, unreadable = [], []
            for secret in secrets:
                try:
                    secret.encrypted = crypto.reencrypt(secret.encrypted)
                except InvalidToken:
                    unreadable.append(secret)
                else:
                    done.append(secret)
            # A live key signs bridge calls: without it, the client's notifications fail
            # (SigningKeyUnreadable). A revoked one signs nothing and is left as it is:
            # revoking is the way out that error names, after which every run stopped
            # here for good, and the encryption key could no longer be rotated.
            live = [s for s in unreadable if s.revoked_at is None]
            if live:
                names = ", ".join(f"{s.prefix}… of client '{s.client.name}'" for s in live)
                raise CommandError(
                    f"no key of NORM_ENCRYPTION_KEY decrypts the live secret key(s) {names}; "
                    "nothing was changed. Put the key they were stored with back in "
                    "NORM_ENCRYPTION_KEY (after the new one), or revoke them"
                )
            SecretKey.objects.bulk_update(done, ["encrypted"], batch_size=500)
        self.stdout.write(f"re-encrypted {len(done)} secret keys")
        if unreadable:
            self.stdout.write(
                f"left {len(unreadable)} revoked secret key(s) that no key of "
                "NORM_ENCRYPTION_KEY decrypts as they were: they sign nothing"
            )
