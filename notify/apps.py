from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"

    def ready(self) -> None:
        from notify import checks  # noqa: F401  (registers the deploy checks)
