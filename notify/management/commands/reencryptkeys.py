from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
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
            secrets = list(SecretKey.objects.select_for_update().only("pk", "encrypted"))
            for secret in secrets:
                secret.encrypted = crypto.reencrypt(secret.encrypted)
            SecretKey.objects.bulk_update(secrets, ["encrypted"], batch_size=500)
        self.stdout.write(f"re-encrypted {len(secrets)} secret keys")
