from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# After the settings are named: the middleware's imports may read them.
from config.middleware import Handler, chunked_bodies

django.setup(set_prefix=False)  # as get_wsgi_application(), which makes Django's handler
application = chunked_bodies(Handler())
