# RabbitMQ from Debian's package (3.10: quorum queues and streams over AMQP
# 0-9-1, which is all the DBaaS uses), configured like the official image:
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST make the
# first user of a fresh node, data in /var/lib/rabbitmq, logs on stdout.
FROM localhost/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* /var/lib/rabbitmq/mnesia
COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV RABBITMQ_LOGS=- RABBITMQ_SASL_LOGS=- HOME=/var/lib/rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 5672
# Root only to own the volume; the entrypoint runs the server as rabbitmq (setpriv: exec, no extra process).
USER root
HEALTHCHECK --interval=5s --timeout=5s --retries=20 CMD ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
