FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NORM_VAR_DIR=/app/var \
    STATIC_ROOT=/app/static

WORKDIR /app
COPY . .
RUN pip install '.[prod]' \
    && python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --home-dir /app norm \
    && mkdir -p var \
    && chown norm var

USER norm
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "8", "--access-logfile", "-"]
