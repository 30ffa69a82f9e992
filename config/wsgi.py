from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from config.middleware import chunked_bodies

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = chunked_bodies(get_wsgi_application())
