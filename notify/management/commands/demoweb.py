"""`manage.py demoweb`: rundemo's web server, Django's runserver with a deeper listen queue.

runserver listens with a queue of 10 connections: a burst of more concurrent requests
than that (a script firing triggers in parallel) had the rest reset by the kernel
before Django saw them.
"""

from __future__ import annotations

from django.core.management.commands.runserver import Command as RunserverCommand
from django.core.servers.basehttp import WSGIServer


class DemoWSGIServer(WSGIServer):
    request_queue_size = 1024


class Command(RunserverCommand):
    help = "Django's development server, as rundemo runs it, for bursts of requests."
    server_cls = DemoWSGIServer
