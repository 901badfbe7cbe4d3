# syntax=docker/dockerfile:1
# Distpotify: one image for both roles, configured by DISTPOTIFY_<OPTION> variables
# (`twistd distpotify --help` and `twistd distpotify-proxy --help` list them).
#
#   a replica (the default):  docker run -e DISTPOTIFY_NODE_ID=1 -v node1:/data distpotify
#   the proxy (by command):   docker run -e DISTPOTIFY_BACKENDS=backend1:8000 -p 8080:8080 \
#                                 distpotify distpotify-proxy
#   (each also needs the cluster key file, DISTPOTIFY_CLUSTER_KEY_FILE, as compose.yaml
#   gives it: the proxy signs its /status polls with it)
#
# The HEALTHCHECK below probes a replica's /health, the one path open to anyone that says
# only "up" (accounts are on by default); compose.yaml points the proxy's at its port 8080.
# docs/operations.md tells how to deploy, scale, back up and upgrade.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# Dependencies first, read from the project's own metadata: this layer is rebuilt when
# setup.cfg or pyproject.toml change, not at every change of the code.
COPY setup.cfg pyproject.toml ./
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options']['install_requires'])" > requirements.txt \
    && pip install -r requirements.txt

# The code, installed as a package with its twistd plugins. The plugin cache is written now
# (away from the source tree), as root: the service user cannot write into site-packages.
COPY README.md ./
COPY distpotify ./distpotify
COPY proxy ./proxy
COPY twisted ./twisted
RUN pip install --no-deps .

WORKDIR /data
RUN python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home distpotify \
    && chown distpotify:distpotify /data

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/distpotify-entrypoint

ENV DISTPOTIFY_HOST=0.0.0.0 \
    DISTPOTIFY_DATA_DIR=/data \
    DISTPOTIFY_HTTP_PORT=8000 \
    DISTPOTIFY_AMP_PORT=9000

# The replica's metadata (SQLite) and chunks: a named volume per replica keeps them across
# container replacements.
VOLUME ["/data"]
USER 10001:10001
# replica HTTP, replica AMP, heartbeats, proxy
EXPOSE 8000 9000 7946/udp 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DISTPOTIFY_HTTP_PORT', '8000') + '/health', timeout=2)"]

# --pidfile= : a pid file left in a volume by a killed container would stop the next start.
ENTRYPOINT ["distpotify-entrypoint", "twistd", "-n", "--pidfile="]
CMD ["distpotify"]
