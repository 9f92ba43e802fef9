# ZooKeeper from Debian's package, laid out like the official image: data in
# /data, transaction log in /datalog, client port 2181, logs on stdout, and the
# ZOO_* variables compose.yml may set (ZOO_4LW_COMMANDS_WHITELIST, ZOO_TICK_TIME,
# ZOO_INIT_LIMIT, ZOO_SYNC_LIMIT, ZOO_MAX_CLIENT_CNXNS) read at start.
FROM localhost/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      zookeeper openjdk-17-jre-headless netcat-openbsd \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data /datalog /conf && chown zookeeper:zookeeper /data /datalog /conf
COPY zookeeper-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME ["/data", "/datalog"]
EXPOSE 2181
# Root only to own the volumes; the entrypoint runs the server as zookeeper.
USER root
HEALTHCHECK --interval=5s --timeout=5s --retries=20 CMD ["sh", "-c", "echo ruok | nc -w 2 localhost 2181 | grep -q imok"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
