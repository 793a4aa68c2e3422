# Production image: gunicorn as a non-root user. Redis and (optionally) OPA come from
# the environment: DECISION_REDIS_URL, DECISION_OPA_URL (see docker-compose.yml).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
# durable_rules builds from source; opa-golib-python-bindings claims Python >= 3.14
# but works on 3.11 (docs/ARCHITECTURE.md), so it is fetched without that check.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --ignore-requires-python \
        opa-golib-python-bindings==0.4.4 \
    && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 decision
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels --ignore-requires-python \
        opa-golib-python-bindings==0.4.4 \
    && pip install --no-cache-dir --no-index --find-links /wheels decision-service \
    && rm -rf /wheels
WORKDIR /srv
COPY rules ./rules
COPY rego ./rego
ENV DECISION_HOST=0.0.0.0 \
    DECISION_PORT=8080 \
    DECISION_DATA_DIR=/srv/var \
    DECISION_RULES_DIR=/srv/rules \
    DECISION_POLICY_DIR=/srv/rego
RUN mkdir -p /srv/var && chown decision /srv/var
USER decision
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["decision-service", "serve"]
