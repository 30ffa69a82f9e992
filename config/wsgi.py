from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.middleware import chunked_bodies  # noqa: E402 (its imports may read the settings)

application = chunked_bodies(get_wsgi_application())
