from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"

    def ready(self) -> None:
        from config import db  # noqa: F401  (the case-insensitive lookups on SQLite)
        from notify import checks  # noqa: F401  (registers the deploy checks)
