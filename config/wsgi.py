from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# After the settings are named: the middleware's imports may read them.
from config.middleware import chunked_bodies

application = chunked_bodies(get_wsgi_application())
