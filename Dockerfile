# ringwatch daemon image. Build: docker build -t ringwatch .
# Run:   docker run -e RINGWATCH_AMI_HOST=pbx -e RINGWATCH_AMI_SECRET=... \
#               -e RINGWATCH_ADMIN_TOKEN=... -p 8080:8080 ringwatch
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY telephony ./telephony
COPY alerts ./alerts
COPY config ./config
COPY deploy/docker.yaml /etc/ringwatch/config.yaml
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/ringwatch --create-home ringwatch

USER ringwatch
ENV RINGWATCH_DATA_DIR=/var/lib/ringwatch
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,sys,urllib.request; p=os.environ.get('RINGWATCH_HTTP_PORT','8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["ringwatch"]
CMD ["run", "--config", "/etc/ringwatch/config.yaml"]
