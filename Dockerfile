# Tollgate sidecar image: `docker build -t tollgate:0.1.0 .`
# Runs as an unprivileged user, serves gRPC on a Unix socket in /run/tollgate (share that directory with the
# harness container), keeps the decision log and state in /var/lib/tollgate (mount a volume there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid tollgate --no-create-home --shell /usr/sbin/nologin tollgate \
 && install -d -o tollgate -g tollgate -m 0750 /var/lib/tollgate \
 && install -d -o tollgate -g tollgate -m 0770 /run/tollgate

WORKDIR /opt/tollgate
# Dependencies first, so that a source change does not reinstall them. The embedded OPA engine is installed
# as tools/setup.sh does: its metadata asks for Python 3.14, its ctypes wrapper runs on 3.11.
COPY requirements.txt ./
RUN pip install -r requirements.txt \
 && pip install --ignore-requires-python opa-golib-python-bindings==0.4.4

COPY pyproject.toml README.md ./
COPY server ./server
COPY tools/tollgate_cli ./tools/tollgate_cli
RUN pip install --no-deps . && rm -rf build server/*.egg-info
# The default policy library, for trying the image out; production pulls a signed bundle (--bundle URL).
COPY rego ./rego

USER 10001:10001
VOLUME ["/var/lib/tollgate"]
ENTRYPOINT ["tollgate"]
CMD ["serve", "--listen", "unix:/run/tollgate/tollgate.sock", "--data-dir", "/var/lib/tollgate", \
     "--bundle", "/opt/tollgate/rego"]
# NOT_SERVING (no policy bundle active: every request is denied) is unhealthy; so is no answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tollgate", "health", "--server", "unix:/run/tollgate/tollgate.sock"]
