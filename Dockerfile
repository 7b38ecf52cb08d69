# The fleet server as a container: API and console on 8080, the managed mosquitto
# (mutual TLS) on 8883, everything it keeps in the /var/lib/fleet volume.
#   docker build -t edgefleet-server .
#   docker compose up -d            (compose.yaml: init on first start, then run)
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/fleet --shell /usr/sbin/nologin edgefleet-server

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgefleet_contract edgefleet_contract
COPY edgefleet_common edgefleet_common
COPY edgefleet_sim edgefleet_sim
COPY edgefleet_demo edgefleet_demo
COPY fleet_server fleet_server
COPY agent agent
COPY docs docs
RUN python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install --no-cache-dir '.[server]' \
    && rm -rf /src

ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLEET_DATA_DIR=/var/lib/fleet \
    FLEET_LOG_FORMAT=json \
    FLEET_API__HOST=0.0.0.0 \
    FLEET_BROKER__BIND=0.0.0.0

RUN mkdir -p /var/lib/fleet && chown edgefleet-server:edgefleet-server /var/lib/fleet
USER edgefleet-server
VOLUME /var/lib/fleet
EXPOSE 8080 8883
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
ENTRYPOINT ["fleet-server"]
CMD ["run"]
